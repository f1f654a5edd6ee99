"""Templater configuration: consul-template's HCL/JSON format (a subset) plus our additions.

Files are parsed with python-hcl2 because pyhcl loses keys when a block name repeats, and
consul-template configs repeat `template {}` all the time (see DESIGN.md). Every error names the
file, a best-effort line and the field, so an operator can fix a config without reading code.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hcl2

DEFAULT_ADDRESS = "127.0.0.1:8500"
DEFAULT_COMMAND_TIMEOUT = 30.0
DEFAULT_PERMS = 0o644
HAPROXY_MODES = ("runtime", "reload", "dns")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(Exception):
    """A configuration mistake, worded for the operator: where it is and what is wrong."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.message, self.file, self.line, self.field = message, file, line, field
        where = ":".join(str(p) for p in (file, line) if p is not None)
        what = f"{field}: " if field else ""
        super().__init__(f"{where + ': ' if where else ''}{what}{message}")


@dataclass(frozen=True)
class RetryConfig:
    """consul { retry {} }: attempts=0 means retry forever (our default, unlike consul-template's 12)."""

    attempts: int = 0
    backoff: float = 0.25
    max_backoff: float = 60.0


@dataclass(frozen=True)
class ConsulConfig:
    address: str = DEFAULT_ADDRESS
    token: str | None = None
    retry: RetryConfig = field(default_factory=RetryConfig)


@dataclass(frozen=True)
class WaitConfig:
    """Quiescence: render once nothing changed for `min`, but never later than `max` after the first change."""

    min: float = 0.0
    max: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.min > 0 or self.max > 0


@dataclass(frozen=True)
class TemplateConfig:
    destination: str
    source: str | None = None
    contents: str | None = None
    command: str | list[str] | None = None
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    check_command: str | list[str] | None = None
    perms: int = DEFAULT_PERMS
    backup: bool = False
    wait: WaitConfig | None = None
    error_on_missing_key: bool = False
    create_dest_dirs: bool = True

    @property
    def label(self) -> str:
        """How logs name this template: its source file, or the destination for inline contents."""
        return self.source or f"{self.destination} (inline contents)"


@dataclass(frozen=True)
class HAProxySettings:
    """The `haproxy {}` block (issue 6); the controller in templater/haproxy/ interprets it."""

    mode: str = "runtime"
    binary: str | None = None
    config: str = ""
    master_socket: str | None = None
    stats_socket: str | None = None
    state_file: str | None = None
    supervise: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def haproxy_variables(settings: HAProxySettings | None) -> dict[str, Any]:
    """The `haproxy` dict templates see: the block's extra keys plus its named settings."""
    if settings is None:
        return {}
    named = {k: getattr(settings, k) for k in ("mode", "binary", "config", "master_socket", "stats_socket",
                                               "state_file", "supervise")}
    return {**settings.extra, **named}


@dataclass(frozen=True)
class Config:
    consul: ConsulConfig = field(default_factory=ConsulConfig)
    wait: WaitConfig | None = None
    templates: tuple[TemplateConfig, ...] = ()
    haproxy: HAProxySettings | None = None
    log_level: str = "info"
    pid_file: str | None = None
    metrics_addr: str | None = None
    block_query_wait: float = 60.0
    missing_key_warning: float = 3.0
    once: bool = False
    dry: bool = False

    def wait_for(self, template: TemplateConfig) -> WaitConfig | None:
        """Per-template wait overrides the global one, as in consul-template."""
        return template.wait if template.wait is not None else self.wait


# --------------------------------------------------------------------------- value parsers


def parse_duration(value: Any, field_name: str = "duration") -> float:
    """Go-style duration ("250ms", "1m30s") to seconds; a bare number means seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{field_name}: expected a duration like \"5s\", got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{field_name}: must not be negative")
        return float(value)
    text = str(value).strip()
    if text in ("", "0"):
        return 0.0
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{field_name}: invalid duration {value!r} (use e.g. \"250ms\", \"5s\", \"1m\")")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def parse_wait(value: Any, field_name: str = "wait") -> WaitConfig:
    """`{min, max}` block or "min[:max]" string; max defaults to 4×min like consul-template."""
    if isinstance(value, list):
        value = value[0] if value else {}
    if isinstance(value, dict):
        unknown = set(value) - {"min", "max", "enabled"}
        if unknown:
            raise ValueError(f"{field_name}: unknown field {sorted(unknown)[0]!r}")
        low = parse_duration(value.get("min", 0), f"{field_name}.min")
        high = parse_duration(value["max"], f"{field_name}.max") if "max" in value else 4 * low
    else:
        low_text, _, high_text = str(value).partition(":")
        low = parse_duration(low_text, field_name)
        high = parse_duration(high_text, field_name) if high_text else 4 * low
    if high < low:
        raise ValueError(f"{field_name}: max ({high}s) is shorter than min ({low}s)")
    return WaitConfig(low, high)


def parse_perms(value: Any) -> int:
    """File mode: "0640", 0o640, or HCL's 0640 (which the parser reads as decimal 640)."""
    if isinstance(value, bool):
        raise ValueError(f"perms: expected a file mode like \"0644\", got {value!r}")
    text = str(value).strip()
    if isinstance(value, str) and text.lower().startswith("0o"):
        text = text[2:]
    if not re.fullmatch(r"[0-7]{1,4}", text):
        raise ValueError(f"perms: invalid file mode {value!r} (use e.g. \"0644\")")
    return int(text, 8)


def parse_template_flag(text: str) -> TemplateConfig:
    """`-template "src:dst[:command]"`: the command may itself contain colons."""
    source, sep, rest = text.partition(":")
    destination, _, command = rest.partition(":")
    if not sep or not source or not destination:
        raise ConfigError(f"expected \"source:destination[:command]\", got {text!r}", field="-template")
    return TemplateConfig(destination=destination, source=source, command=command or None)


def normalize_address(address: str) -> str:
    """CONSUL_HTTP_ADDR may come with or without a scheme; the client wants a base URL."""
    address = address.strip().rstrip("/")
    if not address:
        address = DEFAULT_ADDRESS
    if "://" not in address:
        address = "http://" + address
    return address


# --------------------------------------------------------------------------- file loading


def _hcl_options() -> Any:
    """Same options as the registry's reader: unquoted strings, blocks as lists, comments dropped."""
    return hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)


def read_config_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """Raw dict from one HCL or JSON file, plus its text (kept for line lookups in errors)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", file=str(path)) from exc
    if path.suffix == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON: {exc.msg}", file=str(path), line=exc.lineno) from exc
    else:
        try:
            data = hcl2.loads(text, serialization_options=_hcl_options())
        except Exception as exc:  # lark raises several exception types; all carry line when known
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"invalid HCL: {message}", file=str(path),
                              line=getattr(exc, "line", None)) from exc
    if not isinstance(data, dict):
        raise ConfigError("top level must be an object", file=str(path), line=1)
    return data, text


def config_paths(path: str | Path) -> list[Path]:
    """A directory means every *.hcl / *.json file in it, merged in lexical order (consul-template)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".hcl", ".json") and p.is_file())
    return [path]


def load_config(paths: list[str], base: Config | None = None) -> Config:
    """Merge config files in order onto `base`: later scalars win, templates accumulate."""
    config = base or Config()
    for given in paths:
        for path in config_paths(given):
            data, text = read_config_file(path)
            config = _FileReader(str(path), text).apply(data, config)
    return config


class _FileReader:
    """Turns one file's raw dict into Config fields, naming file/line/field on every mistake."""

    TOP_LEVEL = {"consul", "wait", "template", "haproxy", "log_level", "pid_file", "metrics_addr",
                 "block_query_wait", "missing_key_warning", "max_stale"}
    TEMPLATE_FIELDS = {"source", "destination", "contents", "command", "command_timeout", "check_command",
                       "perms", "backup", "wait", "error_on_missing_key", "create_dest_dirs"}

    def __init__(self, path: str, text: str):
        self.path, self.text = path, text
        self.lines = text.splitlines()

    def error(self, message: str, field_name: str, block: str | None = None, index: int = 0) -> ConfigError:
        return ConfigError(message, file=self.path, line=self.line_of(field_name, block, index),
                           field=field_name if block is None else f"{block}.{field_name}")

    def line_of(self, field_name: str, block: str | None = None, index: int = 0) -> int | None:
        """Best effort: the first line naming the field inside the index-th `block` (HCL or JSON)."""
        start = 0
        if block:
            starts = [i for i, ln in enumerate(self.lines) if re.match(rf'\s*"?{block}"?\s*[:={{\[]', ln)
                      or re.match(rf'\s*"?{block}"?\s*$', ln)]
            start = starts[min(index, len(starts) - 1)] if starts else 0
        leaf = field_name.split(".")[-1]
        pattern = re.compile(rf'^\s*"?{re.escape(leaf)}"?\s*[=:{{]')
        for i in range(start, len(self.lines)):
            if pattern.match(self.lines[i]):
                return i + 1
        return start + 1 if block else None

    def apply(self, data: dict[str, Any], config: Config) -> Config:
        for key in data:
            if key not in self.TOP_LEVEL:
                raise self.error(f"unknown option {key!r}", key)
        updates: dict[str, Any] = {}
        if "consul" in data:
            updates["consul"] = self.consul(_one_block(data["consul"]), config.consul)
        if "wait" in data:
            updates["wait"] = self.guard(lambda: parse_wait(data["wait"]), "wait")
        for name in ("log_level", "pid_file", "metrics_addr"):
            if name in data:
                updates[name] = str(data[name])
        for name in ("block_query_wait", "missing_key_warning"):
            if name in data:
                updates[name] = self.guard(lambda n=name: parse_duration(data[n], n), name)
        templates = list(config.templates)
        for index, block in enumerate(_blocks(data.get("template", []))):
            templates.append(self.template(block, index))
        updates["templates"] = tuple(templates)
        if "haproxy" in data:
            updates["haproxy"] = self.haproxy(_one_block(data["haproxy"]))
        return replace(config, **updates)

    def guard(self, parse: Any, field_name: str, block: str | None = None, index: int = 0) -> Any:
        try:
            return parse()
        except ValueError as exc:
            message = str(exc).split(": ", 1)[-1]
            raise self.error(message, field_name, block, index) from exc

    def consul(self, block: dict[str, Any], current: ConsulConfig) -> ConsulConfig:
        allowed = {"address", "token", "retry"}
        for key in block:
            if key not in allowed:
                raise self.error(f"unknown option {key!r}", key, "consul")
        retry = current.retry
        if "retry" in block:
            retry = self.retry(_one_block(block["retry"]))
        return ConsulConfig(address=str(block.get("address", current.address)),
                            token=block.get("token", current.token), retry=retry)

    def retry(self, block: dict[str, Any]) -> RetryConfig:
        for key in block:
            if key not in {"attempts", "backoff", "max_backoff", "enabled"}:
                raise self.error(f"unknown option {key!r}", key, "retry")
        attempts = block.get("attempts", 0)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
            raise self.error(f"expected a whole number >= 0, got {attempts!r}", "attempts", "retry")
        if block.get("enabled") is False:
            attempts = 1
        backoff = self.guard(lambda: parse_duration(block.get("backoff", 0.25), "backoff"), "backoff", "retry")
        cap = self.guard(lambda: parse_duration(block.get("max_backoff", 60), "max_backoff"),
                         "max_backoff", "retry")
        return RetryConfig(attempts=attempts, backoff=backoff, max_backoff=cap)

    def template(self, block: dict[str, Any], index: int) -> TemplateConfig:
        def bad(message: str, name: str) -> ConfigError:
            return self.error(message, name, "template", index)

        for key in block:
            if key not in self.TEMPLATE_FIELDS:
                raise bad(f"unknown option {key!r}", key)
        if not block.get("destination"):
            raise bad("every template needs a destination", "destination")
        if bool(block.get("source")) == (block.get("contents") is not None):
            raise bad("set exactly one of source and contents", "source")
        values: dict[str, Any] = {k: block[k] for k in ("destination", "source", "contents") if k in block}
        for name in ("command", "check_command"):
            if name in block:
                values[name] = self.command(block[name], name, index)
        for name in ("backup", "error_on_missing_key", "create_dest_dirs"):
            if name in block:
                if not isinstance(block[name], bool):
                    raise bad(f"expected true or false, got {block[name]!r}", name)
                values[name] = block[name]
        if "perms" in block:
            values["perms"] = self.guard(lambda: parse_perms(block["perms"]), "perms", "template", index)
        if "command_timeout" in block:
            values["command_timeout"] = self.guard(
                lambda: parse_duration(block["command_timeout"], "command_timeout"),
                "command_timeout", "template", index)
        if "wait" in block:
            values["wait"] = self.guard(lambda: parse_wait(block["wait"]), "wait", "template", index)
        return TemplateConfig(**values)

    def command(self, value: Any, name: str, index: int) -> str | list[str] | None:
        if value in ("", None, []):
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise self.error(f"expected a string or a list of strings, got {value!r}", name, "template", index)

    def haproxy(self, block: dict[str, Any]) -> HAProxySettings:
        known = {"mode", "binary", "config", "master_socket", "stats_socket", "state_file", "supervise"}
        mode = str(block.get("mode", "runtime"))
        if mode not in HAPROXY_MODES:
            raise self.error(f"must be one of {', '.join(HAPROXY_MODES)}, got {mode!r}", "mode", "haproxy")
        supervise = block.get("supervise", True)
        if not isinstance(supervise, bool):
            raise self.error(f"expected true or false, got {supervise!r}", "supervise", "haproxy")
        text = {k: (str(block[k]) if block.get(k) is not None else None)
                for k in ("binary", "master_socket", "stats_socket", "state_file")}
        return HAProxySettings(mode=mode, config=str(block.get("config", "")), supervise=supervise,
                               extra={k: v for k, v in block.items() if k not in known}, **text)


def _blocks(value: Any) -> list[dict[str, Any]]:
    """HCL gives a list of dicts per block name; JSON may give one dict or a list."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    raise ConfigError(f"expected a block, got {value!r}")


def _one_block(value: Any) -> dict[str, Any]:
    blocks = _blocks(value)
    merged: dict[str, Any] = {}
    for block in blocks:
        merged.update(block)
    return merged


# --------------------------------------------------------------------------- final checks


def finalize(config: Config) -> Config:
    """Environment defaults, then whole-config checks that no single file can make."""
    consul = config.consul
    if consul.token is None and os.environ.get("CONSUL_HTTP_TOKEN"):
        consul = replace(consul, token=os.environ["CONSUL_HTTP_TOKEN"])
    config = replace(config, consul=replace(consul, address=normalize_address(consul.address)))
    if not config.templates:
        raise ConfigError("no templates configured (use -template or a template {} block)", field="template")
    seen: set[str] = set()
    for template in config.templates:
        dest = os.path.abspath(template.destination)
        if dest in seen:
            raise ConfigError(f"two templates write {template.destination}", field="template.destination")
        seen.add(dest)
    if config.haproxy is not None:
        config = replace(config, haproxy=_haproxy_target(config))
    return config


def _haproxy_target(config: Config) -> HAProxySettings:
    """The haproxy block controls one template's destination; default to the only template."""
    settings = config.haproxy
    assert settings is not None
    target = settings.config
    if not target:
        if len(config.templates) != 1:
            raise ConfigError("set the destination HAProxy loads (several templates are configured)",
                              field="haproxy.config")
        target = config.templates[0].destination
    dests = {os.path.abspath(t.destination) for t in config.templates}
    if os.path.abspath(target) not in dests:
        raise ConfigError(f"{target} is not the destination of any template", field="haproxy.config")
    return replace(settings, config=os.path.abspath(target))
