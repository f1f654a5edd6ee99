"""Rendering: a sandboxed Jinja2 environment whose functions read registry data and record it.

Like consul-template, rendering is n-pass: a function whose data has not arrived yet records its
dependency as *missing* and returns an empty value; the output of a render with anything missing
is thrown away (never written), the runner starts watching what was missing, and renders again
when it arrives. The set of dependencies used by the last render is exactly what gets watched, so
a template that stops reading a service stops watching it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import traceback
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from templater.config import TemplateConfig
from templater.dependencies import (
    CatalogNodeQuery,
    CatalogNodesQuery,
    CatalogService,
    CatalogServicesQuery,
    Dependency,
    FileQuery,
    HealthServiceQuery,
    KeyPair,
    KVKeyQuery,
    KVPrefixQuery,
    Node,
    NodeService,
    NodeServices,
    ServiceInstance,
    Weights,
    normalize_prefix,
    parse_states,
)

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")


class DataSource(Protocol):
    def lookup(self, dependency: Dependency) -> tuple[bool, Any]: ...


class TemplateError(Exception):
    """A template problem worded for the operator: file, line, what went wrong."""

    def __init__(self, message: str, file: str, line: int | None = None):
        self.message, self.file, self.line = message, file, line
        super().__init__(f"{file}{f':{line}' if line else ''}: {message}")


class MissingKeyError(Exception):
    """key() on an absent key with error_on_missing_key = true."""


@dataclass
class RenderContext:
    """What one render read: every dependency, and the ones that held it back (with why)."""

    data: DataSource
    error_on_missing_key: bool = False
    used: dict[Dependency, None] = field(default_factory=dict)
    missing: dict[Dependency, str] = field(default_factory=dict)

    def read(self, dependency: Dependency) -> tuple[bool, Any]:
        self.used[dependency] = None
        has_data, value = self.data.lookup(dependency)
        if not has_data:
            self.missing.setdefault(dependency, "waiting for the first answer")
        return has_data, value


@dataclass
class RenderResult:
    text: str | None
    used: set[Dependency]
    missing: dict[Dependency, str]
    error: TemplateError | None = None

    @property
    def complete(self) -> bool:
        return self.text is not None and not self.missing and self.error is None


_current: ContextVar[RenderContext] = ContextVar("templater_render_context")


def _context() -> RenderContext:
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("template functions can only be called while rendering") from None


# --------------------------------------------------------------------------- data functions


def services(tag: str | None = None) -> list:
    """Every service in the catalog (name + tags), sorted by name; optionally only those with `tag`."""
    ok, value = _context().read(CatalogServicesQuery())
    if not ok:
        return []
    return [s for s in value if tag is None or tag in s.tags]


def service(name: str, tag: str | None = None, state: str | list[str] = "passing") -> list[ServiceInstance]:
    """Instances of a service whose aggregated health is one of `state` (comma list, OR-ed)."""
    ok, value = _context().read(HealthServiceQuery(str(name), tag or None, parse_states(state)))
    return value if ok else []


def nodes() -> list[Node]:
    """Every node in the catalog, sorted by name."""
    ok, value = _context().read(CatalogNodesQuery())
    return value if ok else []


def node(name: str | None = None) -> NodeServices | None:
    """A node and its services (default: the agent's own node), or None if it is not registered."""
    ok, value = _context().read(CatalogNodeQuery(name or None))
    return value if ok else None


def key(path: str) -> str:
    """The value at `path`; while the key does not exist the template waits (not written)."""
    context = _context()
    dependency = KVKeyQuery(str(path).lstrip("/"))
    ok, value = context.read(dependency)
    if not ok:
        return ""
    if value is None:
        if context.error_on_missing_key:
            raise MissingKeyError(f"key {dependency.path!r} does not exist in the registry")
        context.missing[dependency] = f"key {dependency.path!r} does not exist in the registry"
        return ""
    return value


def key_or_default(path: str, default: str = "") -> str:
    """The value at `path`, or `default` when the key does not exist (never blocks on absence)."""
    ok, value = _context().read(KVKeyQuery(str(path).lstrip("/")))
    return default if not ok or value is None else value


def key_exists(path: str) -> bool:
    """True when the key exists (even with an empty value)."""
    ok, value = _context().read(KVKeyQuery(str(path).lstrip("/")))
    return ok and value is not None


def _pairs(prefix: str, safe: bool) -> list[KeyPair]:
    context = _context()
    dependency = KVPrefixQuery(normalize_prefix(str(prefix)))
    ok, value = context.read(dependency)
    if ok and safe and not value:
        context.missing[dependency] = f"prefix {dependency.prefix!r} is empty (safe_ls/safe_tree)"
    return value if ok else []


def ls(prefix: str) -> list[KeyPair]:
    """Pairs directly under `prefix` (no nested folders); `key` is relative to the prefix."""
    return [p for p in _pairs(prefix, safe=False) if "/" not in p.key]


def tree(prefix: str) -> list[KeyPair]:
    """Every pair below `prefix`, recursively; `key` is relative to the prefix."""
    return _pairs(prefix, safe=False)


def safe_ls(prefix: str) -> list[KeyPair]:
    """ls() that refuses to render while the prefix is empty (protects against an emptied registry)."""
    return [p for p in _pairs(prefix, safe=True) if "/" not in p.key]


def safe_tree(prefix: str) -> list[KeyPair]:
    """tree() that refuses to render while the prefix is empty."""
    return _pairs(prefix, safe=True)


def env(name: str, default: str = "") -> str:
    """An environment variable of the templater process (read at render time, not watched)."""
    return os.environ.get(str(name), default)


def file(path: str) -> str:
    """A local file's text, re-rendered when it changes; waits while the file does not exist."""
    context = _context()
    dependency = FileQuery(os.path.abspath(str(path)))
    ok, value = context.read(dependency)
    if ok and value is None:
        context.missing[dependency] = f"file {dependency.path!r} does not exist"
    return value if ok and value is not None else ""


FUNCTIONS = {f.__name__: f for f in (services, service, nodes, node, key, key_or_default, key_exists, ls,
                                     tree, safe_ls, safe_tree, env, file)}

# --------------------------------------------------------------------------- filters


def by_tag(instances: Iterable[Any]) -> dict[str, list[Any]]:
    """Group instances (or catalog services) by each of their tags, tags sorted."""
    groups: dict[str, list[Any]] = {}
    for item in instances:
        for tag in item.tags:
            groups.setdefault(tag, []).append(item)
    return dict(sorted(groups.items()))


def by_meta(instances: Iterable[Any], meta_key: str, default: str = "") -> dict[str, list[Any]]:
    """Group instances by the value of one Meta key (missing → `default`), values sorted."""
    groups: dict[str, list[Any]] = {}
    for item in instances:
        groups.setdefault(item.meta.get(meta_key, default), []).append(item)
    return dict(sorted(groups.items()))


def service_meta(instances: Iterable[Any]) -> dict[str, str]:
    """A service's Meta as one dict: for each key, the first non-empty value among its instances.

    Instances of one service usually carry the same Meta, but a rolling deploy may set a key on
    some only. Reading it once per service (`{% set meta = instances|service_meta %}`) replaces a
    template loop over every instance and key, the largest single cost of a 1,000-service HAProxy render.
    Example: `(instances|service_meta).get("edge-host", "")`."""
    merged: dict[str, str] = {}
    for item in instances:
        for meta_key, value in item.meta.items():
            if value and meta_key not in merged:
                merged[meta_key] = value
    return merged


def by_status(instances: Iterable[Any]) -> dict[str, list[Any]]:
    """Group instances by aggregated health (passing, warning, critical, maintenance), statuses sorted.

    One call per service instead of `selectattr("status", ...)`, which goes through the sandbox's
    slow attribute path for every instance. Example: `(instances|by_status).get("passing", [])`."""
    groups: dict[str, list[Any]] = {}
    for item in instances:
        groups.setdefault(item.status, []).append(item)
    return dict(sorted(groups.items()))


def comma_list(text: Any) -> list[str]:
    """The items of a comma-separated value (e.g. a Meta value), stripped, empty ones dropped.

    Example: `"a.local, ,B.local"|comma_list` → `["a.local", "B.local"]`."""
    return [item.strip() for item in str(text).split(",") if item.strip()]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def to_json(value: Any, indent: int | None = None) -> str:
    """JSON text of any value, dataclasses included; keys sorted so output is stable."""
    return json.dumps(value, default=_plain, sort_keys=True, indent=indent)


def parse_json(text: str) -> Any:
    """Decode JSON text (e.g. a KV value); empty text gives an empty dict."""
    return json.loads(text) if str(text).strip() else {}


def sanitize(text: Any) -> str:
    """Make a string safe as an HAProxy backend/server name: [A-Za-z0-9_.:-], anything else → '_'."""
    return _UNSAFE_NAME_CHARS.sub("_", str(text))


FILTERS = {f.__name__: f for f in (by_tag, by_meta, by_status, service_meta, comma_list, to_json, parse_json,
                                   sanitize)}

# --------------------------------------------------------------------------- templates


_DATA_FIELDS = {cls: frozenset(f.name for f in dataclasses.fields(cls))
                for cls in (CatalogService, ServiceInstance, Weights, Node, NodeService, NodeServices, KeyPair)}


_PLAIN_TYPES = frozenset({dict, list, tuple, str, int, float, bool, jinja2.utils.Namespace})
_STR_FORMAT = frozenset({"format", "format_map"})  # the sandbox wraps these: keep them on its path


class _Environment(SandboxedEnvironment):
    """The sandbox checks every attribute access (~7 µs each); reading a field of our own frozen,
    data-only dataclasses is always safe, and a 1,000-service HAProxy template does ~100k of them."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        kind = type(obj)
        fields = _DATA_FIELDS.get(kind)
        if fields is not None and attribute in fields:
            return getattr(obj, attribute)
        if kind in _PLAIN_TYPES and not attribute.startswith("_") and attribute not in _STR_FORMAT:
            # What the sandbox would allow anyway (public attributes of plain containers; it
            # only checks the object's type and the leading underscore), minus its bookkeeping.
            return jinja2.Environment.getattr(self, obj, attribute)
        return super().getattr(obj, attribute)


def make_environment(search_path: str | None) -> SandboxedEnvironment:
    """Sandboxed (templates come from operators, not code), strict (typos fail loudly)."""
    loader = jinja2.FileSystemLoader(search_path) if search_path else None
    environment = _Environment(loader=loader, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                       lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    environment.globals.update(FUNCTIONS)
    environment.filters.update(FILTERS)
    return environment


class TemplateRenderer:
    """One configured template: compiled once per source change, rendered on every data change."""

    def __init__(self, config: TemplateConfig):
        self.config = config
        self.label = config.label
        self.template: jinja2.Template | None = None

    @property
    def source_dir(self) -> str | None:
        return os.path.dirname(os.path.abspath(self.config.source)) if self.config.source else None

    def compile(self) -> None:
        """(Re)load the source; raises TemplateError with file and line on a syntax error."""
        environment = make_environment(self.source_dir)
        try:
            if self.config.source:
                self.template = environment.get_template(os.path.basename(self.config.source))
            else:
                code = environment.compile(self.config.contents or "", name=self.label, filename=self.label)
                self.template = environment.template_class.from_code(
                    environment, code, environment.make_globals(None), None)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"syntax error: {exc.message}", exc.filename or self.label, exc.lineno) from exc
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"template not found: {exc.name}", self.label) from exc
        except OSError as exc:
            raise TemplateError(f"cannot read template: {exc.strerror or exc}", self.label) from exc

    def render(self, data: DataSource, variables: dict[str, Any] | None = None) -> RenderResult:
        """One pass. Missing data → text None; a template error → error set, text None.

        `variables` become template globals (the runner passes `haproxy`: the haproxy {} settings)."""
        context = RenderContext(data, self.config.error_on_missing_key)
        if self.template is None:
            self.compile()
        assert self.template is not None
        token = _current.set(context)
        try:
            text = self.template.render(variables or {})
        except Exception as exc:  # noqa: BLE001 - every template failure becomes a located message
            if context.missing and not isinstance(exc, MissingKeyError):
                # Empty first-pass values (e.g. parse_json of a key not fetched yet) cause errors
                # that vanish once the data arrives: wait for it instead of reporting them.
                return RenderResult(None, set(context.used), dict(context.missing))
            return RenderResult(None, set(context.used), dict(context.missing), self._locate(exc))
        finally:
            _current.reset(token)
        return RenderResult(None if context.missing else text, set(context.used), dict(context.missing))

    def _locate(self, exc: Exception) -> TemplateError:
        """Jinja rewrites tracebacks so template frames carry the template's file and line."""
        if isinstance(exc, jinja2.TemplateSyntaxError):  # an included partial failed to parse
            return TemplateError(f"syntax error: {exc.message}", exc.filename or self.label, exc.lineno)
        file, line = self.label, None
        for frame in traceback.extract_tb(exc.__traceback__):
            if not frame.filename.endswith(".py"):
                file, line = frame.filename, frame.lineno
        if isinstance(exc, jinja2.TemplateNotFound):
            message = f"template not found: {exc.name}"
        elif isinstance(exc, MissingKeyError | jinja2.UndefinedError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        return TemplateError(message, file, line)
