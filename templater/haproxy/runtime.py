"""Client for a worker's stats socket (the Runtime API): dynamic servers and their state.

Every command is checked against the answer HAProxy gives on success, because the Runtime API
reports errors as plain text with no status code; an unexpected answer raises RuntimeCommandError
and the controller falls back to a reload. Sequences follow haproxy.md §2.1, verified on 2.8:
`add server` leaves the server in maintenance with checks off, so it is followed by
`enable health` (when it has `check`) and `enable server`; `del server` only works on a server in
maintenance with no connections, so removal is `set server state maint` → retry `del server` until
the connections are gone (bounded) → `shutdown sessions server` as a last resort. A request that
was in flight when the server entered maintenance leaves its connection in the idle pool (verified
on 2.8), which blocks `del server` until the pool is purged; passing the server through `drain`
and back to `maint` purges it at once.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from templater.haproxy.mastercli import CLIError, cli_exchange
from templater.haproxy.model import Server

# srv_admin_state bits (include/haproxy/server-t.h, SRV_ADMF_*)
ADMIN_FORCED_MAINT = 0x01
ADMIN_INHERITED_MAINT = 0x02
ADMIN_CONFIG_MAINT = 0x04
ADMIN_FORCED_DRAIN = 0x08
ADMIN_INHERITED_DRAIN = 0x10
ADMIN_RESOLUTION_MAINT = 0x20
ADMIN_FQDN_FROM_CLI = 0x40  # SRV_ADMF_HMAINT: despite its name, "FQDN set", not a maintenance state
ADMIN_MAINT_MASK = ADMIN_FORCED_MAINT | ADMIN_INHERITED_MAINT | ADMIN_CONFIG_MAINT | ADMIN_RESOLUTION_MAINT
OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3

STILL_CONNECTED = "connections attached"


class RuntimeCommandError(RuntimeError):
    """A Runtime API command was refused or the socket failed; the message has HAProxy's answer."""


@dataclass(frozen=True)
class ServerState:
    """One row of `show servers state` (the server-state-file format)."""

    backend: str
    name: str
    addr: str
    port: int | None
    op_state: int
    admin_state: int
    weight: int          # srv_uweight: the effective user weight
    initial_weight: int  # srv_iweight: the weight from the config file
    fqdn: str = "-"
    srvrecord: str = "-"

    @property
    def in_maintenance(self) -> bool:
        return bool(self.admin_state & ADMIN_MAINT_MASK)

    @property
    def serving(self) -> bool:
        """Takes new traffic: not in maintenance or drain, and not marked down by a check."""
        draining = self.admin_state & (ADMIN_FORCED_DRAIN | ADMIN_INHERITED_DRAIN)
        return not self.in_maintenance and not draining and self.op_state != OP_STOPPED


def parse_servers_state(text: str) -> list[ServerState]:
    """Parse `show servers state` output: a version line, a `# header`, one row per server."""
    header: list[str] = []
    rows: list[ServerState] = []
    for line in text.splitlines():
        if line.startswith("#"):
            header = line[1:].split()
            continue
        fields = line.split()
        if not header or len(fields) < len(header) // 2:
            continue
        row = dict(zip(header, fields, strict=False))
        port = row.get("srv_port", "")
        rows.append(ServerState(
            backend=row["be_name"], name=row["srv_name"], addr=row.get("srv_addr", "-"),
            port=int(port) if port.isdigit() else None,
            op_state=int(row.get("srv_op_state", 0)), admin_state=int(row.get("srv_admin_state", 0)),
            weight=int(row.get("srv_uweight", 0)), initial_weight=int(row.get("srv_iweight", 0)),
            fqdn=row.get("srv_fqdn", "-"), srvrecord=row.get("srvrecord", "-")))
    return rows


def filter_state_file(text: str, stale: set[tuple[str, str]]) -> str:
    """Drop the rows of servers whose saved state must not survive a reload.

    HAProxy 2.8 restores a server's address and port from the state file even when the new config
    gives it different ones (verified: the config's port lost to the saved one), so a server the
    new config changes must not be in the file; the config then wins.
    """
    kept = []
    header: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            header = line[1:].split()
        elif header:
            row = dict(zip(header, line.split(), strict=False))
            if (row.get("be_name"), row.get("srv_name")) in stale:
                continue
        kept.append(line)
    return "\n".join(kept) + "\n"


class RuntimeAPI:
    """One worker stats socket (`stats socket <path> level admin`)."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.path = path
        self.timeout = timeout

    def command(self, command: str, expect: str | None = None) -> str:
        """Run one command; `expect` is a regex the answer must contain, None means "empty answer"."""
        try:
            answer = cli_exchange(self.path, command, self.timeout).strip()
        except CLIError as exc:
            raise RuntimeCommandError(str(exc)) from exc
        ok = re.search(expect, answer) is not None if expect else answer == ""
        if not ok:
            raise RuntimeCommandError(f"{command!r}: {answer or 'no answer'}")
        return answer

    # --- reads ---------------------------------------------------------------------------------

    def servers_state_text(self, backend: str | None = None) -> str:
        """Raw `show servers state`, exactly what `server-state-file` expects."""
        try:
            return cli_exchange(self.path, "show servers state" + (f" {backend}" if backend else ""),
                                self.timeout)
        except CLIError as exc:
            raise RuntimeCommandError(str(exc)) from exc

    def servers_state(self, backend: str | None = None) -> list[ServerState]:
        return parse_servers_state(self.servers_state_text(backend))

    def server_connections(self, backend: str) -> dict[str, tuple[int, int]]:
        """`show servers conn <backend>` → {server: (connections in use, idle connections)}."""
        try:
            text = cli_exchange(self.path, f"show servers conn {backend}", self.timeout)
        except CLIError as exc:
            raise RuntimeCommandError(str(exc)) from exc
        header: list[str] = []
        result: dict[str, tuple[int, int]] = {}
        for line in text.splitlines():
            if line.startswith("#"):
                header = line[1:].split()
            elif header and line.strip():
                row = dict(zip(header, line.split(), strict=False))
                name = row.get("bkname/svname", "").partition("/")[2]
                result[name] = (int(row.get("used_cur", 0)), int(row.get("idle_cur", 0)))
        return result

    def show_stat(self, proxy: str | None = None) -> list[dict[str, str]]:
        """`show stat` as dicts keyed by the CSV header (pxname, svname, status, weight, scur, ...)."""
        command = f"show stat {proxy} -1 -1" if proxy else "show stat"
        try:
            text = cli_exchange(self.path, command, self.timeout)
        except CLIError as exc:
            raise RuntimeCommandError(str(exc)) from exc
        return list(csv.DictReader(io.StringIO(text.lstrip("# "))))

    # --- writes --------------------------------------------------------------------------------

    def add_server(self, backend: str, server: Server) -> None:
        """`add server` with the line's own options (default-server does not apply to dynamic servers
        on 2.8), then turn checks and traffic on."""
        options = " ".join((f"weight {server.weight}", *server.options))
        self.command(f"add server {backend}/{server.name} {server.address} {options}",
                     expect=r"New server registered")
        if "check" in server.options:
            self.command(f"enable health {backend}/{server.name}")
        if not server.disabled:
            self.command(f"enable server {backend}/{server.name}")

    def set_address(self, backend: str, server: Server) -> None:
        port = f" port {server.port}" if server.port is not None else ""
        self.command(f"set server {backend}/{server.name} addr {server.addr}{port}",
                     expect=r"changed from|no need to change")

    def set_weight(self, backend: str, server: Server) -> None:
        self.command(f"set server {backend}/{server.name} weight {server.weight}")

    def set_maintenance(self, backend: str, name: str, maintenance: bool) -> None:
        self.command(f"set server {backend}/{name} state {'maint' if maintenance else 'ready'}")

    def remove_servers(self, servers: Iterable[tuple[str, str]], drain_timeout: float = 5.0) -> None:
        """Remove servers: all to maintenance at once, then delete each as soon as its connections
        are gone; after `drain_timeout` cut the remaining sessions and delete anyway."""
        pending = list(servers)
        for backend, name in pending:
            self.set_maintenance(backend, name, True)
        deadline = time.monotonic() + drain_timeout
        while pending:
            pending = [pair for pair in pending if not self._try_delete(*pair)]
            if not pending:
                return
            if time.monotonic() >= deadline:
                # bounded drain: cut what is still running, as hard-stop-after would on a reload
                for backend, name in pending:
                    self.command(f"shutdown sessions server {backend}/{name}")
                time.sleep(0.05)
                for backend, name in pending:
                    self.command(f"del server {backend}/{name}", expect=r"Server deleted")
                return
            time.sleep(0.02)

    def _try_delete(self, backend: str, name: str) -> bool:
        """Delete one server; False while it still has connections in use, error for anything else."""
        try:
            self.command(f"del server {backend}/{name}", expect=r"Server deleted")
            return True
        except RuntimeCommandError as exc:
            if STILL_CONNECTED not in str(exc):
                raise
        used, idle = self.server_connections(backend).get(name, (0, 0))
        if used == 0:
            # only idle connections left: drain → maint purges them, then delete right away
            self.command(f"set server {backend}/{name} state drain")
            self.set_maintenance(backend, name, True)
            return self._delete_if_free(backend, name)
        return False

    def _delete_if_free(self, backend: str, name: str) -> bool:
        try:
            self.command(f"del server {backend}/{name}", expect=r"Server deleted")
            return True
        except RuntimeCommandError as exc:
            if STILL_CONNECTED in str(exc):
                return False
            raise
