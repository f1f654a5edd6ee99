"""Process supervision for `edgestack up`: start children in their own process groups, stop them all.

Why process groups: a child may have children of its own, and Ctrl-C must leave no orphan. Each
child is started in a new session (so the terminal's Ctrl-C reaches only `up`, which then stops the
parts in order: demo instances deregister while the registry still answers, the templater stops the
HAProxy it supervises, the registry goes last) and is stopped with a signal to its whole group.
HAProxy runs in a session of its own (the templater starts it that way), so after the templater
exits, `up` sweeps any HAProxy process still running its config. Children also get SIGTERM if
`up` itself is killed (Linux parent-death signal), so even `kill -9` of `up` leaves no orphan.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child
except OSError:
    _LIBC = None


class StackError(Exception):
    """Something to tell the user, then stop what was started and exit 1."""


@dataclass(frozen=True)
class PortClaim:
    """A port a part will listen on, and how the user would change it."""

    port: int
    what: str
    flag: str
    udp: bool = False


def check_ports(claims: list[PortClaim], host: str = "127.0.0.1") -> None:
    """Before starting anything: every port free (TCP, and UDP where asked) and no port used twice."""
    seen: dict[int, PortClaim] = {}
    for claim in claims:
        if claim.port == 0:
            continue
        if claim.port in seen:
            other = seen[claim.port]
            raise StackError(f"port {claim.port} is given to both {other.what} ({other.flag}) and "
                             f"{claim.what} ({claim.flag}); pick different ports")
        seen[claim.port] = claim
        kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if claim.udp else (socket.SOCK_STREAM,)
        for kind in kinds:
            if not _can_bind(host, claim.port, kind):
                proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
                raise StackError(f"port {claim.port} ({claim.what}, {proto}) is already in use on {host}; "
                                 f"stop whatever holds it or choose another with {claim.flag} PORT")


def _can_bind(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the real servers do
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent(parent: int) -> None:
    """Runs in the child between fork and exec: SIGTERM when `up` dies, even by SIGKILL."""
    if _LIBC is None:
        return
    try:
        _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except AttributeError:
        return
    if os.getppid() != parent:  # `up` died before prctl took effect
        os._exit(1)


@dataclass
class Child:
    """One process `up` started: its name in the status lines, its log, its Popen."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    started: float = field(default_factory=time.monotonic)
    log_offset: int = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, cwd: Path | None = None) -> Child:
        """New session (own process group), output appended to the log, stdin closed."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.log_offset = log.tell()
            log.write(f"\n--- {self.name} started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                      f"{' '.join(self.argv)}\n".encode())
            log.flush()
            parent = os.getpid()
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd=cwd,
                                         start_new_session=True, preexec_fn=lambda: _die_with_parent(parent))
        self.started = time.monotonic()
        return self

    def signal(self, sig: int) -> None:
        """To the whole process group (the child is its leader), so its own children hear it too."""
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> bool:
        """True when the child exited within timeout; then its group gets SIGKILL for stragglers."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        kill_group(self.proc.pid)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        stop_children([self], timeout)

    def log_text(self) -> str:
        """What this run of the child logged (the file keeps earlier runs too)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().rstrip().splitlines()[-lines:])


def kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in a process group whose leader has exited."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_children(children: list[Child], timeout: float = 10.0) -> None:
    """SIGTERM every group at once (stopping in parallel is faster), then SIGKILL what is left."""
    live = [c for c in children if c.running()]
    for child in live:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in live:
        if not child.wait(max(0.1, deadline - time.monotonic())):
            child.signal(signal.SIGKILL)
            child.wait(5.0)


# --------------------------------------------------------------------------- HAProxy processes


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def haproxy_pids(config_path: Path) -> list[int]:
    """Live HAProxy processes (master and workers share the command line) running this config."""
    config = str(config_path.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        argv = cmdline(pid)
        if argv and "haproxy" in os.path.basename(argv[0]) and config in argv and not _is_zombie(pid):
            found.append(pid)
    return sorted(found)


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def haproxy_master(config_path: Path) -> int | None:
    """The master among the HAProxy processes of this config: the one whose parent is not one of them."""
    pids = haproxy_pids(config_path)
    masters = [pid for pid in pids if _parent(pid) not in pids]
    return masters[0] if masters else None


def sweep_haproxy(config_path: Path, timeout: float = 5.0) -> list[int]:
    """Stop HAProxy processes the templater left behind (it should stop them itself); returns their pids."""
    pids = haproxy_pids(config_path)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and haproxy_pids(config_path):
            time.sleep(0.05)
        if not haproxy_pids(config_path):
            break
    return pids


def process_alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; it only waits for its parent to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)
