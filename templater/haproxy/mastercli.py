"""The HAProxy master CLI: reload with a status, `show proc`, and the socket exchange both CLIs share.

Two traps from the reference notes (haproxy.md §3.1) shape this module:
- the master keeps a connection open while the client's write side is open, so every exchange
  half-closes (`shutdown(SHUT_WR)`) after sending and then reads until EOF;
- a reload's answer (`Success=1|0` then the startup log) can be long: read to EOF, never one `recv()`.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field

ALERT_RE = re.compile(r"^\[ALERT\]")


class CLIError(RuntimeError):
    """The socket could not be reached or did not answer in time."""


def _connect(path: str, timeout: float, connect_retry: float) -> socket.socket:
    """Connect, retrying a refused or missing socket for up to connect_retry seconds: while the master
    re-executes itself for a reload its socket refuses connections for a moment (seen on 2.8)."""
    deadline = time.monotonic() + connect_retry
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
        except OSError:
            sock.close()
            raise


def cli_exchange(path: str, command: str, timeout: float = 10.0, connect_retry: float = 2.0) -> str:
    """Send one command line to an HAProxy CLI socket (master or stats) and return everything it answers.

    Several commands may be joined with `;`. The write side is shut after sending, which is what
    makes both the master CLI and a worker's stats socket close the connection once they are done.
    A connection that cannot be made is retried (nothing was sent yet, so that is always safe).
    """
    deadline = time.monotonic() + timeout
    try:
        sock = _connect(path, timeout, connect_retry)
    except OSError as exc:
        raise CLIError(f"{path}: {command.split(';')[0]!r} failed: {exc}") from exc
    try:
        sock.sendall(command.rstrip("\n").encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode(errors="replace")
    except (OSError, TimeoutError) as exc:
        raise CLIError(f"{path}: {command.split(';')[0]!r} failed: {exc}") from exc
    finally:
        sock.close()


@dataclass(frozen=True)
class ReloadStatus:
    """What the master answered to `reload`: success flag, ALERT lines, the whole startup log."""

    ok: bool
    alerts: list[str]
    output: str


@dataclass(frozen=True)
class ProcInfo:
    """One line of `show proc`."""

    pid: int
    kind: str          # "master" | "worker"
    reloads: int
    failed: int = 0
    old: bool = False  # a worker still draining from before a reload
    version: str = ""


@dataclass
class ProcTable:
    """`show proc` parsed: the master, the current worker(s) and old workers still draining."""

    master: ProcInfo | None = None
    workers: list[ProcInfo] = field(default_factory=list)
    old_workers: list[ProcInfo] = field(default_factory=list)

    @property
    def reloads(self) -> int:
        """Reloads the master has done since it started (failed ones included)."""
        return self.master.reloads if self.master else 0

    @property
    def failed_reloads(self) -> int:
        return self.master.failed if self.master else 0


def alert_lines(output: str) -> list[str]:
    """The `[ALERT]` lines of an HAProxy startup log, as HAProxy printed them."""
    return [line.strip() for line in output.splitlines() if ALERT_RE.match(line.strip())]


def parse_reload(output: str) -> ReloadStatus:
    """Parse a reload answer. No `Success=` line (HAProxy < 2.7) counts as a failure to be safe."""
    ok = False
    for line in output.splitlines():
        if line.startswith("Success="):
            ok = line.strip() == "Success=1"
            break
    return ReloadStatus(ok=ok, alerts=alert_lines(output), output=output)


_PROC_RE = re.compile(r"^(\d+)\s+(master|worker)\s+(\d+)(?:\s+\[failed:\s*(\d+)\])?\s+(\S+)\s*(\S*)")


def parse_show_proc(output: str) -> ProcTable:
    """Parse `show proc` (2.8 layout: `#<PID> <type> <reloads> <uptime> <version>`, then
    `# workers` and `# old workers` sections)."""
    table = ProcTable()
    section = "master"
    for raw in output.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            low = line.lower()
            if "old workers" in low:
                section = "old"
            elif "workers" in low:
                section = "workers"
            elif "programs" in low:
                section = "programs"
            continue
        match = _PROC_RE.match(line)
        if not match or section == "programs":
            continue
        info = ProcInfo(pid=int(match.group(1)), kind=match.group(2), reloads=int(match.group(3)),
                        failed=int(match.group(4) or 0), old=section == "old", version=match.group(6))
        if info.kind == "master":
            table.master = info
        elif section == "old":
            table.old_workers.append(info)
        else:
            table.workers.append(info)
    return table


class MasterCLI:
    """Client for one master socket (`haproxy -W -S <path>`)."""

    def __init__(self, path: str, timeout: float = 10.0, reload_timeout: float = 60.0):
        self.path = path
        self.timeout = timeout
        self.reload_timeout = reload_timeout

    def command(self, command: str, timeout: float | None = None, connect_retry: float = 2.0) -> str:
        """Run a master command (or `@1 <cmd>` for the current worker) and return its answer."""
        return cli_exchange(self.path, command, timeout or self.timeout, connect_retry)

    def reload(self) -> ReloadStatus:
        """Reload and wait for the verdict; the master answers once the new worker is up or has failed."""
        return parse_reload(cli_exchange(self.path, "reload", self.reload_timeout))

    def show_proc(self, connect_retry: float = 2.0) -> ProcTable:
        return parse_show_proc(self.command("show proc", connect_retry=connect_retry))

    def alive(self) -> bool:
        """True when a master answers on the socket and has a current worker (a quick probe)."""
        try:
            return bool(self.show_proc(connect_retry=0.2).workers)
        except CLIError:
            return False
