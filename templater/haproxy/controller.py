"""HAProxyController: what the templater calls to check, apply and supervise HAProxy.

Runtime first, file always, reload as fallback (haproxy.md §4/§7). The templater has already
written the new config when it calls `apply()`; the controller decides how the live HAProxy gets
there: nothing (same model), Runtime API commands (only servers changed, `runtime` mode), or a
reload through the master CLI (anything else, any failed runtime command, `reload`/`dns` modes).

The controller keeps the text of the config the live HAProxy is serving (`live`), because that, not
the templater's idea of the previous file, is what a diff must start from: after a failed reload
the old worker still serves the old config, and after a restart it serves whatever was on disk.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from typing import Any, Protocol

from templater.config import parse_duration
from templater.haproxy.binary import BinaryNotFound, find_haproxy, haproxy_version
from templater.haproxy.mastercli import CLIError, MasterCLI, alert_lines
from templater.haproxy.model import (
    ConfigDiff,
    ConfigModel,
    Server,
    ServerChange,
    diff_models,
    parse_config,
    runtime_paths,
)
from templater.haproxy.process import HAProxyProcess
from templater.haproxy.runtime import (
    ADMIN_FORCED_MAINT,
    RuntimeAPI,
    RuntimeCommandError,
    ServerState,
    filter_state_file,
)
from templater.output import ApplyResult, CheckResult

MODES = ("runtime", "reload", "dns")


class Settings(Protocol):
    """The fields of the templater's HAProxySettings this module reads."""

    mode: str
    binary: str | None
    config: str
    master_socket: str | None
    stats_socket: str | None
    state_file: str | None
    supervise: bool
    extra: dict[str, Any]


def seconds(extra: dict[str, Any], name: str, default: float) -> float:
    """A duration setting from the `haproxy {}` block: a number of seconds or a Go duration ("2s")."""
    value = extra.get(name)
    return default if value is None else parse_duration(value, f"haproxy.{name}")


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def describe(changes: list[ServerChange]) -> str:
    """`+2 -1 ~1 servers (web, api)`: a one-line summary for logs and ApplyResult.detail."""
    added = sum(c.kind == "add" for c in changes)
    removed = sum(c.kind == "remove" for c in changes)
    backends = sorted({c.backend for c in changes})
    return f"+{added} -{removed} ~{len(changes) - added - removed} servers ({', '.join(backends)})"


class HAProxyController:
    """Check configs, apply them to a live HAProxy, supervise it."""

    def __init__(self, settings: Settings, metrics: Any, log: logging.Logger):
        if settings.mode not in MODES:
            raise ValueError(f"haproxy mode must be one of {', '.join(MODES)}, not {settings.mode!r}")
        self.settings = settings
        self.metrics = metrics
        self.log = log
        self.extra = dict(settings.extra or {})
        self._binary: str | None = None
        self.runtime = RuntimeAPI(settings.stats_socket or "", seconds(self.extra, "runtime_timeout", 5.0))
        self.state_file: str | None = settings.state_file
        self.drain_timeout = seconds(self.extra, "drain_timeout", 5.0)
        self.check_timeout = seconds(self.extra, "check_timeout", 30.0)
        self.process: HAProxyProcess | None = None
        self.live: str | None = None         # config text the running HAProxy serves
        self.last_good: str | None = None    # last config HAProxy loaded successfully
        self._dirty = False                  # live state may not match `live`: reload next time
        self._lock = threading.RLock()

    @property
    def binary(self) -> str:
        """The HAProxy binary, looked up on first use (BinaryNotFound says where it looked)."""
        if self._binary is None:
            self._binary = find_haproxy(self.settings.binary)
        return self._binary

    # --- interface -----------------------------------------------------------------------------

    def start(self, config_path: str) -> None:
        """Attach to a running master or start one on config_path; then make its servers match."""
        version = haproxy_version(self.binary)
        if version < (2, 8, 0):
            self.log.warning("HAProxy %s: reload status and dynamic servers need 2.8+", version)
        self.process = HAProxyProcess(
            self.binary, config_path, self._master_socket(config_path), self.log,
            supervise=self.settings.supervise, on_restart=self._restarted,
            last_good=lambda: self.last_good, check=lambda path: self.check(path).ok)
        self.process.start()
        with self._lock, self.process.lock:
            if self.process.owned:
                self._set_live(_read(config_path), good=True, loaded=True)
            else:
                self._attached(_read(config_path))

    def _master_socket(self, config_path: str) -> str:
        config_dir = os.path.dirname(os.path.abspath(config_path))
        return self.settings.master_socket or os.path.join(config_dir, "haproxy-master.sock")

    def running(self, config_path: str) -> bool:
        """Whether a master already answers for this config: then attach before the file changes; if not,
        the first render is installed first and HAProxy starts on it (no start-then-reload)."""
        return MasterCLI(self._master_socket(config_path)).alive()

    def _attached(self, text: str | None) -> None:
        """An HAProxy was already running. The `.loaded` copy says which config its worker loaded: if
        the file's structure moved on (a templater died between install and reload), reload now;
        otherwise only servers can differ, and runtime mode fixes them through the Runtime API."""
        loaded = _read(self._loaded_path())
        self._set_live(text, good=True)
        if text is None:
            return
        if loaded is not None:
            diff = diff_models(parse_config(loaded), parse_config(text))
            if diff.structural:
                self.live = loaded
                self._reload(diff, "the attached HAProxy runs an older config: " + diff.structural[0])
                return
        if self.settings.mode == "runtime":
            self._reconcile(parse_config(text))

    def check(self, staged_path: str) -> CheckResult:
        """`haproxy -c -f staged_path`: the verdict, the ALERT lines, the whole output."""
        try:
            done = subprocess.run([self.binary, "-c", "-f", staged_path], capture_output=True, text=True,
                                  timeout=self.check_timeout)
        except (OSError, subprocess.TimeoutExpired, BinaryNotFound) as exc:
            return CheckResult(False, [f"haproxy -c could not run: {exc}"], str(exc))
        output = done.stdout + done.stderr
        return CheckResult(done.returncode == 0, alert_lines(output), output)

    def apply(self, previous: str | None, current: str, config_path: str) -> ApplyResult:
        """Bring the live HAProxy to `current` (already installed at config_path)."""
        if self.process is None:
            raise RuntimeError("HAProxyController.apply() before start()")
        with self._lock, self.process.lock:
            baseline = self.live if self.live is not None else previous
            if baseline is None:
                return self._reload(None, "live config unknown")
            diff = diff_models(parse_config(baseline), parse_config(current))
            if self._dirty:
                return self._reload(diff, "an earlier update left the live servers uncertain")
            if diff.empty:
                self._set_live(current)
                return ApplyResult(True, "none", [], "no server or structural change")
            if self.settings.mode == "runtime" and diff.runtime_only:
                result = self._apply_runtime(diff, current)
                if result is not None:
                    return result
                return self._reload(diff, "a runtime command failed")
            return self._reload(diff, "; ".join(diff.structural) or f"{self.settings.mode} mode")

    def stop(self) -> None:
        """Stop supervising; stop HAProxy if this controller started it."""
        if self.process is not None:
            self.process.stop()

    def detach(self) -> None:
        """Stop supervising and leave HAProxy serving (see HAProxyProcess.detach)."""
        if self.process is not None:
            self.process.detach()

    # --- runtime path --------------------------------------------------------------------------

    def _apply_runtime(self, diff: ConfigDiff, current: str) -> ApplyResult | None:
        """Apply server changes with no reload; None when a command failed (caller reloads)."""
        try:
            self._run_changes(diff.changes)
        except RuntimeCommandError as exc:
            self.log.warning("runtime update failed, falling back to a reload: %s", exc)
            self._dirty = True
            return None
        self._set_live(current)
        self.metrics.runtime_updates.inc(len(diff.changes))
        detail = describe(diff.changes)
        self.log.info("runtime update: %s", detail)
        return ApplyResult(True, "runtime", [], detail)

    def _run_changes(self, changes: list[ServerChange]) -> None:
        """Capacity first: additions, then in-place changes, then removals (drained)."""
        for change in changes:
            if change.kind == "add":
                self.runtime.add_server(change.backend, change.server)
        for change in changes:
            if change.kind == "set_addr":
                self.runtime.set_address(change.backend, change.server)
            elif change.kind == "set_weight":
                self.runtime.set_weight(change.backend, change.server)
            elif change.kind == "set_state":
                self.runtime.set_maintenance(change.backend, change.server.name, change.server.disabled)
        removals = [(c.backend, c.server.name) for c in changes if c.kind == "remove"]
        if removals:
            self.runtime.remove_servers(removals, self.drain_timeout)

    def _reconcile(self, model: ConfigModel) -> None:
        """After attaching: make the live servers match the file (a templater that died between
        installing a file and applying it left them apart); reload if that fails."""
        try:
            live = self.runtime.servers_state()
        except RuntimeCommandError as exc:
            self.log.warning("cannot read live servers after attaching: %s", exc)
            return
        changes = reconcile_changes(model, live)
        if not changes:
            self.log.info("attached: live servers match %s", self.settings.config)
            return
        self.log.info("attached: live servers differ from the file, fixing: %s", describe(changes))
        try:
            self._run_changes(changes)
        except RuntimeCommandError as exc:
            self.log.warning("reconcile failed (%s); reloading", exc)
            self._reload(None, "reconcile after attach failed")

    # --- reload path ---------------------------------------------------------------------------

    def _reload(self, diff: ConfigDiff | None, reason: str) -> ApplyResult:
        """Save server state (minus servers the new config changes), reload, read the verdict."""
        assert self.process is not None
        self._save_state(diff.touched() if diff else set())
        self.metrics.reloads.inc()
        self.log.info("reloading HAProxy: %s", reason)
        try:
            status = self.process.master.reload()
        except CLIError as exc:
            self.metrics.reload_failures.inc()
            self.log.error("reload failed: %s", exc)
            return ApplyResult(False, "reload", [], f"master CLI: {exc}")
        if not status.ok:
            self.metrics.reload_failures.inc()
            for alert in status.alerts:
                self.log.error("reload failed: %s", alert)
            return ApplyResult(False, "reload", status.alerts, "HAProxy refused the new config (Success=0); "
                               "the previous worker keeps serving")
        self._set_live(_read(self.process.config_path), good=True, loaded=True)
        self._dirty = False
        return ApplyResult(True, "reload", [], reason)

    def _save_state(self, stale: set[tuple[str, str]]) -> None:
        """`show servers state` → state file, atomically; a failure only costs the saved state."""
        path = self.state_file
        if not path:
            return
        try:
            text = filter_state_file(self.runtime.servers_state_text(), stale)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path + ".tmp", "w") as handle:
                handle.write(text)
            os.replace(path + ".tmp", path)
        except (RuntimeCommandError, OSError) as exc:
            self.log.warning("could not save server state before reload: %s", exc)

    def _restarted(self) -> None:
        """Called by the supervisor after HAProxy came back: it now serves the file on disk."""
        self.metrics.haproxy_restarts.inc()
        assert self.process is not None
        self._set_live(_read(self.process.config_path), good=True, loaded=True)
        self._dirty = False

    def _loaded_path(self) -> str:
        assert self.process is not None
        return self.process.config_path + ".loaded"

    def _set_live(self, text: str | None, good: bool = False, loaded: bool = False) -> None:
        """Record what HAProxy now serves (`loaded`: a worker just read it from the file, so keep a
        copy beside the config for a templater that attaches later), and follow the sockets that
        config declares unless the `haproxy {}` block fixed them (relative to the config's directory)."""
        self.live = text
        if good and text is not None:
            self.last_good = text
        if text is None or self.process is None:
            return
        if loaded:
            try:
                with open(self._loaded_path() + ".tmp", "w") as handle:
                    handle.write(text)
                os.replace(self._loaded_path() + ".tmp", self._loaded_path())
            except OSError as exc:
                self.log.warning("cannot keep a copy of the loaded config: %s", exc)
        stats_socket, state_file = runtime_paths(text, os.path.dirname(self.process.config_path))
        if not self.settings.stats_socket and stats_socket:
            self.runtime.path = stats_socket
        if not self.settings.state_file:
            self.state_file = state_file


def reconcile_changes(model: ConfigModel, live: list[ServerState]) -> list[ServerChange]:
    """Server changes that turn the live servers into the model's, for backends managed by `server`
    lines only (DNS `server-template` slots belong to HAProxy's resolver)."""
    by_backend: dict[str, dict[str, ServerState]] = {}
    for state in live:
        by_backend.setdefault(state.backend, {})[state.name] = state
    changes: list[ServerChange] = []
    for backend in model.backends.values():
        if not backend.dynamic or backend.templated:
            continue
        current = by_backend.get(backend.name, {})
        for name, server in backend.servers.items():
            state = current.get(name)
            if state is None:
                changes.append(ServerChange("add", backend.name, server))
                continue
            if (state.addr, state.port) != (server.addr, server.port) and server.port is not None:
                changes.append(ServerChange("set_addr", backend.name, server))
            if state.weight != server.weight:
                changes.append(ServerChange("set_weight", backend.name, server))
            wrong_maint = state.in_maintenance if not server.disabled else not state.in_maintenance
            if wrong_maint and (server.disabled or state.admin_state & ADMIN_FORCED_MAINT):
                changes.append(ServerChange("set_state", backend.name, server))
        changes.extend(ServerChange("remove", backend.name, Server(name, state.addr, state.port))
                       for name, state in current.items() if name not in backend.servers)
    return changes
