"""A model of a rendered haproxy.cfg and the diff that decides between the Runtime API and a reload.

The model splits a config in two: the servers of each backend (name, address, port, weight,
maintenance — what the Runtime API can change) and the "structure", which is every other line,
normalised. Two renders whose structure is equal differ only in servers, and those differences can
be applied to a live HAProxy without a reload (haproxy.md §4, "runtime first, file always").
Anything the Runtime API cannot express (a new backend, a keyword, a server option such as `check`)
is structural and needs a reload.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

SECTION_KEYWORDS = frozenset({
    "global", "defaults", "frontend", "backend", "listen", "resolvers", "peers", "userlist", "mailers",
    "program", "http-errors", "ring", "cache", "crt-store", "log-forward", "fcgi-app", "traces",
})
PROXY_SECTIONS = frozenset({"backend", "listen"})
# LB algorithms whose backends accept `add server` (haproxy.md §2.1): static-rr never; the map-based
# hashes only with `hash-type consistent`.
STATIC_ALGORITHMS = frozenset({"static-rr"})
HASH_ALGORITHMS = frozenset({"source", "uri", "url_param", "hdr", "rdp-cookie", "hash"})


def strip_comment(line: str) -> str:
    """Drop an HAProxy comment (`#` outside quotes, at a word start) and surrounding blanks."""
    quote = ""
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].strip()
    return line.strip()


def normalise(line: str) -> str:
    """One line as the structure compares it: comment removed, runs of blanks collapsed."""
    return " ".join(strip_comment(line).split())


@dataclass(frozen=True)
class Server:
    """One `server` line of a backend, split into what the Runtime API can change and the rest."""

    name: str
    addr: str
    port: int | None
    weight: int = 1
    disabled: bool = False
    options: tuple[str, ...] = ()   # every other keyword, in order; a change here is structural

    @property
    def address(self) -> str:
        """`addr:port` as `add server` wants it (IPv6 in brackets)."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return host if self.port is None else f"{host}:{self.port}"


@dataclass
class Backend:
    """A backend (or listen) section: its servers and whether `add server` can work on it."""

    name: str
    servers: dict[str, Server] = field(default_factory=dict)
    dynamic: bool = True            # its LB algorithm supports runtime add/del
    templated: bool = False         # has `server-template` slots (filled by HAProxy's DNS resolver)


@dataclass
class ConfigModel:
    """A parsed config: the structure (normalised non-server lines, in order) and the backends."""

    structure: tuple[str, ...]
    backends: dict[str, Backend]

    def servers(self) -> dict[tuple[str, str], Server]:
        """Every server keyed by (backend, server name)."""
        return {(be.name, srv.name): srv for be in self.backends.values() for srv in be.servers.values()}


def split_address(text: str) -> tuple[str, int | None]:
    """`1.2.3.4:80` → ("1.2.3.4", 80); `[::1]:80` → ("::1", 80); no or non-numeric port → None port."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if port.isdigit():
            return host, int(port)
    return text, None


def parse_server(tokens: list[str]) -> Server:
    """Parse the tokens after `server`: name, address, then keywords."""
    name, address, *rest = tokens + [""] * max(0, 2 - len(tokens))
    addr, port = split_address(address)
    weight, disabled, options = 1, False, []
    index = 0
    while index < len(rest):
        token = rest[index]
        if token == "weight" and index + 1 < len(rest) and rest[index + 1].isdigit():
            weight = int(rest[index + 1])
            index += 2
            continue
        if token == "disabled":
            disabled = True
        elif token != "enabled":
            options.append(token)
        index += 1
    return Server(name=name, addr=addr, port=port, weight=weight, disabled=disabled, options=tuple(options))


@dataclass
class _Section:
    kind: str
    name: str
    lines: list[str] = field(default_factory=list)


def _sections(text: str) -> list[_Section]:
    """Group normalised lines under their section header; lines before any header go to a nameless one."""
    sections = [_Section("", "")]
    for raw in text.splitlines():
        line = normalise(raw)
        if not line:
            continue
        words = line.split()
        if words[0] in SECTION_KEYWORDS:
            sections.append(_Section(words[0], words[1] if len(words) > 1 else ""))
        sections[-1].lines.append(line)
    return sections


def _is_dynamic(balance: list[str], consistent: bool) -> bool:
    algorithm = balance[1] if len(balance) > 1 else "roundrobin"
    if algorithm in STATIC_ALGORITHMS:
        return False
    return not (algorithm in HASH_ALGORITHMS and not consistent)


def parse_config(text: str) -> ConfigModel:
    """Parse a rendered config into its model. Tolerant: it never raises on text HAProxy would reject,
    because `haproxy -c` is the judge of validity, not this parser."""
    structure: list[str] = []
    backends: dict[str, Backend] = {}
    default_balance: list[str] = []
    default_consistent = False
    for section in _sections(text):
        balance, consistent = list(default_balance), default_consistent
        servers: dict[str, Server] = {}
        templated = False
        for line in section.lines:
            words = line.split()
            if section.kind in PROXY_SECTIONS and words[0] == "server" and len(words) >= 3:
                server = parse_server(words[1:])
                servers[server.name] = server
                continue
            structure.append(line)
            templated = templated or words[0] == "server-template"
            if words[0] == "balance":
                balance = words
            elif words[:2] == ["hash-type", "consistent"]:
                consistent = True
        if section.kind == "defaults":
            default_balance, default_consistent = balance, consistent
        elif section.kind in PROXY_SECTIONS:
            backends[section.name] = Backend(section.name, servers, _is_dynamic(balance, consistent),
                                             templated)
    return ConfigModel(tuple(structure), backends)


@dataclass(frozen=True)
class ServerChange:
    """One runtime-applicable change: add, remove, set_addr, set_weight or set_state."""

    kind: str
    backend: str
    server: Server          # the new server (the old one for "remove")
    old: Server | None = None


@dataclass
class ConfigDiff:
    """What separates two models: server-level changes, or the reasons a reload is needed."""

    changes: list[ServerChange] = field(default_factory=list)
    structural: list[str] = field(default_factory=list)   # human-readable reasons

    @property
    def empty(self) -> bool:
        return not self.changes and not self.structural

    @property
    def runtime_only(self) -> bool:
        return bool(self.changes) and not self.structural

    def touched(self) -> set[tuple[str, str]]:
        """(backend, server) pairs whose live state must not be restored from the state file."""
        return {(change.backend, change.server.name) for change in self.changes}


def _structure_reason(old: ConfigModel, new: ConfigModel) -> str | None:
    if old.structure == new.structure:
        return None
    before, after = set(old.structure), set(new.structure)
    added = [line for line in new.structure if line not in before]
    removed = [line for line in old.structure if line not in after]
    sample = ["+ " + line for line in added[:2]] + ["- " + line for line in removed[:2]]
    sample = sample or ["order changed"]
    return "structure changed: " + "; ".join(sample)


def _server_changes(backend: str, old: Server, new: Server) -> tuple[list[ServerChange], str | None]:
    if old.options != new.options:
        return [], f"server {backend}/{new.name} options changed: {' '.join(new.options)!r}"
    changes = []
    if (old.addr, old.port) != (new.addr, new.port):
        if new.port is None:
            return [], f"server {backend}/{new.name} lost its port"
        changes.append(ServerChange("set_addr", backend, new, old))
    if old.weight != new.weight:
        changes.append(ServerChange("set_weight", backend, new, old))
    if old.disabled != new.disabled:
        changes.append(ServerChange("set_state", backend, new, old))
    return changes, None


def _backend_changes(old: Backend, new: Backend, diff: ConfigDiff) -> None:
    for name, server in new.servers.items():
        if name not in old.servers:
            diff.changes.append(ServerChange("add", new.name, server))
            continue
        changes, reason = _server_changes(new.name, old.servers[name], server)
        diff.changes.extend(changes)
        if reason:
            diff.structural.append(reason)
    for name, server in old.servers.items():
        if name not in new.servers:
            diff.changes.append(ServerChange("remove", new.name, server))
    membership = any(c.kind in ("add", "remove") for c in diff.changes if c.backend == new.name)
    if membership and not new.dynamic:
        diff.structural.append(f"backend {new.name} has a static LB algorithm: servers cannot be "
                               "added or removed at runtime")


def diff_models(old: ConfigModel, new: ConfigModel) -> ConfigDiff:
    """Diff two models. Server changes are listed even when the diff is structural, so a reload can
    tell which servers' saved state is stale."""
    diff = ConfigDiff()
    reason = _structure_reason(old, new)
    if reason:
        diff.structural.append(reason)
    for name, backend in new.backends.items():
        if name in old.backends:
            _backend_changes(old.backends[name], backend, diff)
        else:
            diff.changes.extend(ServerChange("add", name, srv) for srv in backend.servers.values())
    for name, backend in old.backends.items():
        if name not in new.backends:
            diff.changes.extend(ServerChange("remove", name, srv) for srv in backend.servers.values())
    return diff


def _unix_path(address: str, base_dir: str) -> str | None:
    """A `stats socket` address as a filesystem path; None for TCP addresses."""
    if address.startswith("unix@"):
        address = address[len("unix@"):]
    elif not address.startswith(("/", "./", "../")):
        return None
    return address if os.path.isabs(address) else os.path.normpath(os.path.join(base_dir, address))


def runtime_paths(text: str, base_dir: str) -> tuple[str | None, str | None]:
    """(admin stats socket, server-state-file) declared in the `global` section of a config.

    Lets the controller follow the config it manages when the `haproxy {}` block names no paths;
    relative paths are resolved against base_dir (the directory HAProxy is started in).
    """
    socket_path: str | None = None
    state_file = state_base = None
    for section in _sections(text):
        if section.kind != "global":
            continue
        for line in section.lines:
            words = line.split()
            if words[:2] == ["stats", "socket"] and len(words) > 2:
                path = _unix_path(words[2], base_dir)
                if path and (socket_path is None or "admin" in words[3:]):
                    socket_path = path
            elif words[0] == "server-state-file" and len(words) > 1:
                state_file = words[1].strip("\"'")
            elif words[0] == "server-state-base" and len(words) > 1:
                state_base = words[1].strip("\"'")
    if state_file and not os.path.isabs(state_file):
        state_file = os.path.normpath(os.path.join(state_base or base_dir, state_file))
    return socket_path, state_file


def _section_of(raw: str) -> tuple[str, str] | None:
    """(kind, name) when the line opens a section, else None."""
    words = normalise(raw).split()
    if words and words[0] in SECTION_KEYWORDS:
        return words[0], words[1] if len(words) > 1 else ""
    return None


def _is_server_line(raw: str, section: tuple[str, str] | None) -> bool:
    words = normalise(raw).split()
    return bool(section) and section[0] in PROXY_SECTIONS and len(words) >= 3 and words[0] == "server"


def _server_lines(text: str) -> dict[str, list[str]]:
    """Each backend's `server` lines, as written."""
    found: dict[str, list[str]] = {}
    section: tuple[str, str] | None = None
    for raw in text.splitlines():
        section = _section_of(raw) or section
        if _section_of(raw) is None and _is_server_line(raw, section):
            found.setdefault(section[1], []).append(raw)
        elif section and section[0] in PROXY_SECTIONS:
            found.setdefault(section[1], [])
    return found


def merge_servers(good: str, new: str) -> str:
    """The structure of `good` with the servers `new` gives each backend both have.

    When a render's structure is refused (an operator's bad KV fragment fails `haproxy -c`, or a
    reload fails), the last good structure stays; merging the new servers into it lets scaling go
    on through the Runtime API instead of freezing until the fragment is fixed.
    """
    wanted = _server_lines(new)
    out: list[str] = []
    section: tuple[str, str] | None = None
    placed = True

    def place_pending(at_section_end: bool) -> None:
        nonlocal placed
        if not placed and section is not None:
            at = len(out)
            while at_section_end and at > 0 and not out[at - 1].strip():  # before the section's closing blanks
                at -= 1
            out[at:at] = wanted[section[1]]
        placed = True

    for raw in good.splitlines():
        header = _section_of(raw)
        if header is not None:
            place_pending(at_section_end=True)
            section = header
            placed = not (header[0] in PROXY_SECTIONS and header[1] in wanted)
            out.append(raw)
        elif not placed and _is_server_line(raw, section):
            place_pending(at_section_end=False)  # the new servers go where the first old one stood
        elif _is_server_line(raw, section) and section[1] in wanted:
            continue  # an old server of a backend whose servers were replaced
        else:
            out.append(raw)
    place_pending(at_section_end=True)
    return "\n".join(out) + ("\n" if good.endswith("\n") else "")
