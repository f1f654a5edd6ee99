"""Service (and check) definitions from config files: registered at start, re-applied on reload.

Consul reads `service { ... }` / `services = [...]` (and top-level `check` / `checks`) from every
-config-file and every *.hcl / *.json file of every -config-dir. This module does the same, file by
file, so that it knows which file each definition came from:

* at start, every definition is registered (the files already parsed once in registry.config);
* on SIGHUP, PUT /v1/agent/reload (`edgestack reload`) or an edit in a watched directory
  (watchdog, debounced), the files are read again and the difference is applied: new and changed
  definitions registered, definitions whose file no longer has them deregistered. Watching is on
  by default (Consul's `auto_reload_config` defaults to off); `auto_reload_config = false` in a
  config file turns it off, leaving SIGHUP and reload;
* a file that fails to parse or holds an invalid definition is reported with its name, and its
  last good definitions stay in force, so one bad edit takes nothing down.

Which services and checks came from files is stored in the store's meta table, so a file removed
while the agent was down still has its services removed at the next start. Definitions registered
through the HTTP API are never touched.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from registry.body import Body, RequestError
from registry.checkdefs import CHECK_ALIASES, parse_check, parse_service_checks
from registry.config import ConfigError, config_dir_files, load_config_file
from registry.http.services import parse_service
from registry.store import Store, StoreError

log = logging.getLogger("registry.services_config")

DEBOUNCE = 0.25  # seconds of quiet after the last file event before re-reading
OWNED_KEY = "config_owned"  # meta record: {"services": {id: source}, "checks": {id: source}}
ENV_SOURCE = "CONSUL_LOCAL_CONFIG"
FLAGS_SOURCE = "command line"
SERVICE_ALIASES = {"serviceid": "id"}
CONFIG_SUFFIXES = (".hcl", ".json")


@dataclass
class Definitions:
    """What one source (file) defines: services with their checks, and standalone checks."""

    services: dict[str, tuple[dict, list[dict]]] = field(default_factory=dict)
    checks: dict[str, dict] = field(default_factory=dict)


def _items(data: dict[str, Any], *keys: str) -> list[Any]:
    out: list[Any] = []
    for key in keys:
        value = data.get(key)
        if value is None:
            continue
        out.extend(value if isinstance(value, list) else [value])
    return out


def parse_definitions(data: dict[str, Any], node: str, scripts: bool) -> Definitions:
    """Service and check definitions of one parsed config file; RequestError on the first bad one."""
    defs = Definitions()
    for raw in _items(data, "service", "services"):
        if not isinstance(raw, dict):
            raise RequestError(400, "a service definition must be an object")
        body = Body(raw, SERVICE_ALIASES)
        try:
            service = parse_service(body)
            checks = parse_service_checks(body, service, node, scripts, local=True)
        except RequestError as exc:
            name = body.get("Name") or body.get("ID") or "?"
            raise RequestError(exc.status, f"service {name!r}: {exc.text}") from None
        defs.services[service["ID"]] = (service, checks)
    for raw in _items(data, "check", "checks"):
        if not isinstance(raw, dict):
            raise RequestError(400, "a check definition must be an object")
        body = Body(raw, CHECK_ALIASES)
        try:
            check = parse_check(body, node, enable_script_checks=scripts, local=True)
        except RequestError as exc:
            raise RequestError(exc.status, f"check {body.get('Name') or '?'!r}: {exc.text}") from None
        defs.checks[check["CheckID"]] = check
    return defs


def _fingerprint(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class ConfigServices:
    """Keeps the registry's config-file services in step with the files."""

    def __init__(self, store: Store, config: Any):
        self.store = store
        self.config = config
        self.node = store.node_name
        self.last_good: dict[str, Definitions] = {}
        self.applied: dict[str, str] = {}  # "service:<id>" / "check:<id>" -> fingerprint last registered
        self._lock = asyncio.Lock()
        self._observer: Any = None
        self._debounce: asyncio.TimerHandle | None = None
        self._pending: asyncio.Task | None = None
        self.last_errors: list[str] = []
        self._flag_defs: Definitions | None = None

    # -------------------------------------------------------------- reading the files

    def sources(self) -> tuple[list[Path], list[str]]:
        """Config files then each config dir's files (lexical order), as Consul reads them."""
        files = list(self.config.config_files)
        errors = []
        for directory in self.config.config_dirs:
            try:
                files.extend(config_dir_files(Path(directory)))
            except ConfigError as exc:
                errors.append(str(exc))
        return files, errors

    def _read(self, path: Path) -> Definitions:
        try:
            return parse_definitions(load_config_file(path), self.node, self.config.enable_script_checks)
        except RequestError as exc:
            raise ConfigError(f"{path}: {exc.text}") from None

    def _read_env(self) -> Definitions | None:
        text = os.environ.get(ENV_SOURCE)
        if not text:
            return None
        try:
            data = json.loads(text)
            return parse_definitions(data if isinstance(data, dict) else {}, self.node,
                                     self.config.enable_script_checks)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{ENV_SOURCE}: invalid JSON: {exc.msg}") from None
        except RequestError as exc:
            raise ConfigError(f"{ENV_SOURCE}: {exc.text}") from None

    def read_all(self) -> tuple[dict[str, Definitions], list[str]]:
        """Every source's definitions; a broken source keeps its last good ones and adds an error."""
        files, errors = self.sources()
        current: dict[str, Definitions] = {}
        readers: list[tuple[str, Any]] = [(str(p), lambda p=p: self._read(p)) for p in files]
        readers.append((ENV_SOURCE, self._read_env))
        for name, read in readers:
            try:
                defs = read()
            except ConfigError as exc:
                errors.append(str(exc))
                if name in self.last_good:
                    current[name] = self.last_good[name]
                continue
            if defs is not None:
                current[name] = defs
                self.last_good[name] = defs
        for gone in set(self.last_good) - set(current):
            del self.last_good[gone]
        if self._flag_defs is None:
            sink = [] if errors else errors  # after a file failed, a bad definition is most likely its own
            self._flag_defs = self._flag_definitions(current, sink)
        if self._flag_defs.services:
            current[FLAGS_SOURCE] = self._flag_defs
        return current, errors

    def _flag_definitions(self, from_sources: dict[str, Definitions], errors: list[str]) -> Definitions:
        """Services given on the command line (-hcl): in the startup config but in no file.

        They cannot change while the agent runs, so they are computed once, at start. An invalid
        one is reported only when no file failed (otherwise it is that file's, already reported).
        """
        known = {sid for defs in from_sources.values() for sid in defs.services}
        found = Definitions()
        for raw in self.config.services:
            try:
                defs = parse_definitions({"service": raw}, self.node, self.config.enable_script_checks)
            except RequestError as exc:
                errors.append(f"{FLAGS_SOURCE}: {exc.text}")
                continue
            found.services.update({sid: item for sid, item in defs.services.items() if sid not in known})
        return found

    # -------------------------------------------------------------- applying them

    async def reload(self) -> list[str]:
        """Re-read every source and apply the differences; returns the errors (also logged)."""
        async with self._lock:
            try:
                current, errors = self.read_all()
                errors.extend(await self._apply(current))
            except Exception as exc:  # noqa: BLE001 - a failed reload is reported, never fatal
                log.exception("config: reloading service definitions failed")
                errors = [f"reloading service definitions failed: {type(exc).__name__}: {exc}"]
        for error in errors:
            log.error("config: %s", error)
        self.last_errors = errors
        return errors

    async def _apply(self, current: dict[str, Definitions]) -> list[str]:
        owned = self.store.meta.get(OWNED_KEY) or {"services": {}, "checks": {}}
        services: dict[str, tuple[str, dict, list[dict]]] = {}
        checks: dict[str, tuple[str, dict]] = {}
        for source, defs in current.items():
            for sid, (service, service_checks) in defs.services.items():
                services[sid] = (source, service, service_checks)
            for cid, check in defs.checks.items():
                checks[cid] = (source, check)
        errors: list[str] = []
        await self._remove_stale(owned, services, checks)
        for source, service, service_checks in services.values():
            await self._register_service(source, service, service_checks, errors)
        for source, check in checks.values():
            await self._register_check(source, check, errors)
        new_owned = {"services": {sid: s for sid, (s, _, _) in services.items()},
                     "checks": {**{c["CheckID"]: s for s, _, cs in services.values() for c in cs},
                                **{cid: s for cid, (s, _) in checks.items()}}}
        if new_owned != owned:
            await self.store.put_record("meta", OWNED_KEY, new_owned, "meta")
        return errors

    async def _remove_stale(self, owned: dict, services: dict, checks: dict) -> None:
        """Deregister what a file used to define and no longer does."""
        wanted_checks = set(checks) | {c["CheckID"] for _, _, cs in services.values() for c in cs}
        for sid, source in owned.get("services", {}).items():
            if sid not in services:
                self.applied.pop(f"service:{sid}", None)
                if await self.store.deregister_service(sid):
                    log.info("config: service %s removed (no longer in %s)", sid, source)
        for cid in owned.get("checks", {}):
            if cid not in wanted_checks and (self.node, cid) in self.store.checks:
                self.applied.pop(f"check:{cid}", None)
                await self.store.deregister_check(self.node, cid)

    async def _register_service(self, source: str, service: dict, checks: list[dict],
                                errors: list[str]) -> None:
        sid = service["ID"]
        stamp = _fingerprint([service, checks])
        if self.applied.get(f"service:{sid}") == stamp and (self.node, sid) in self.store.services:
            return
        try:
            await self.store.register_service(copy.deepcopy(service), copy.deepcopy(checks), False)
        except StoreError as exc:
            errors.append(f"{source}: service {sid!r}: {exc.text}")
            return
        self.applied[f"service:{sid}"] = stamp
        log.info("config: service %s registered from %s", sid, source)

    async def _register_check(self, source: str, check: dict, errors: list[str]) -> None:
        cid = check["CheckID"]
        stamp = _fingerprint(check)
        if self.applied.get(f"check:{cid}") == stamp and (self.node, cid) in self.store.checks:
            return
        sid = check["ServiceID"]
        if sid and (self.node, sid) not in self.store.services:
            errors.append(f'{source}: check {cid!r}: ServiceID "{sid}" does not exist')
            return
        try:
            await self.store.register_check(copy.deepcopy(check))
        except StoreError as exc:
            errors.append(f"{source}: check {cid!r}: {exc.text}")
            return
        self.applied[f"check:{cid}"] = stamp

    # -------------------------------------------------------------- watching the directories

    def watch(self) -> None:
        """Watch the config dirs and the directories of the config files (inotify via watchdog)."""
        loop = asyncio.get_running_loop()
        dirs = {Path(d).resolve() for d in self.config.config_dirs if Path(d).is_dir()}
        files = {Path(f).resolve() for f in self.config.config_files}
        watched = dirs | {f.parent for f in files if f.parent.is_dir()}
        if not watched:
            return
        handler = _ChangeHandler(lambda: loop.call_soon_threadsafe(self._poke), dirs, files)
        observer = Observer()
        for directory in watched:
            observer.schedule(handler, str(directory), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.info("config: watching %s", ", ".join(sorted(map(str, watched))))

    def _poke(self) -> None:
        """A file changed: reload once things have been quiet for DEBOUNCE seconds."""
        if self._debounce is not None:
            self._debounce.cancel()
        self._debounce = asyncio.get_running_loop().call_later(DEBOUNCE, self._reload_soon)

    def _reload_soon(self) -> None:
        self._debounce = None
        self._pending = asyncio.get_running_loop().create_task(self.reload())

    async def stop(self) -> None:
        if self._debounce is not None:
            self._debounce.cancel()
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        if self._observer is not None:
            self._observer.stop()
            await asyncio.to_thread(self._observer.join, 5)


class _ChangeHandler(FileSystemEventHandler):
    """Forwards events about config files (any *.hcl/*.json in a config dir, or a named file)."""

    def __init__(self, notify: Any, dirs: set[Path], files: set[Path]):
        self.notify = notify
        self.dirs = dirs
        self.files = files

    def _relevant(self, raw: str | bytes) -> bool:
        if not raw:
            return False
        path = Path(os.fsdecode(raw)).resolve()
        return path in self.files or (path.suffix in CONFIG_SUFFIXES and path.parent in self.dirs)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if self._relevant(event.src_path) or self._relevant(getattr(event, "dest_path", "")):
            self.notify()


async def start_config_services(agent: Any, app: web.Application) -> ConfigServices:
    """Called by the agent at start: register the files' services, then follow the files."""
    part = ConfigServices(agent.store, agent.config)
    app["reload"] = part.reload
    app["config_services"] = part
    await part.reload()
    if agent.config.raw.get("auto_reload_config", True) is not False:
        part.watch()
    return part
