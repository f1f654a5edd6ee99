"""`edgestack up` end to end: the real registry, templater, HAProxy 2.8 and demo instances on free ports.

Requests go through HAProxy's front; `edgestack scale` grows and shrinks the demo service and HAProxy
must follow; SIGTERM must leave no process behind (checked by pid and by process group); a second
start on the same directory must find the registry's data.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from edgestack.stack import haproxy_pids, process_alive, sweep_haproxy
from edgestack.up import serving_servers
from tests.procs import ROOT, free_port, wait_until

pytestmark = pytest.mark.timeout(150)


class UpProcess:
    """One `python -m edgestack up` on free ports in a directory of its own."""

    def __init__(self, root: Path):
        self.root = root
        self.data_dir = root / ".edgestack"
        self.ports = {"http": free_port(), "dns": free_port(), "front": free_port(), "stats": free_port(),
                      "metrics": free_port()}
        self.proc: subprocess.Popen | None = None
        self.out = root / "up.out"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_HTTP_")}

    def flags(self) -> list[str]:
        p = self.ports
        return ["-data-dir", str(self.data_dir), "-http-port", str(p["http"]), "-dns-port", str(p["dns"]),
                "-front-port", str(p["front"]), "-stats-port", str(p["stats"]),
                "-metrics-port", str(p["metrics"])]

    def start(self, *extra: str) -> UpProcess:
        with open(self.out, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgestack", "up", *self.flags(), *extra],
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.root, env=self.env,
                                         start_new_session=True)
        wait_until(self._up, timeout=90, interval=0.2, message="`edgestack up` to report it is up")
        assert "edgestack is up" in self.output(), f"edgestack up exited:\n{self.output()}"
        return self

    def _up(self) -> bool:
        """Up, or gone (then start() fails at once with the output instead of polling on)."""
        return "edgestack is up" in self.output() or (self.proc is not None and self.proc.poll() is not None)

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def state(self) -> dict:
        return json.loads((self.data_dir / "stack.json").read_text())

    def scale(self, service: str, count: int) -> str:
        done = subprocess.run([sys.executable, "-m", "edgestack", "scale", "-data-dir", str(self.data_dir),
                               service, str(count)], capture_output=True, text=True, cwd=ROOT, env=self.env,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports['front']}{path}"

    def registry(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['http']}{path}"


@pytest.fixture
def up(tmp_path: Path) -> Iterator[UpProcess]:
    stack = UpProcess(tmp_path)
    yield stack
    if stack.proc is not None and stack.proc.poll() is None:  # the test failed midway: clean up anyway
        stack.proc.send_signal(signal.SIGTERM)
        try:
            stack.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.proc.pid, signal.SIGKILL)  # its children get SIGTERM (parent-death signal)
            stack.proc.wait(10)
    sweep_haproxy(stack.data_dir / "haproxy" / "haproxy.cfg")


def instances_seen(stack: UpProcess, expected: set[str], rounds: int = 3) -> bool:
    """True once `rounds` passes of len(expected) requests through HAProxy hit exactly `expected`."""
    seen: set[str] = set()
    with requests.Session() as http:
        for _ in range(rounds * max(1, len(expected))):
            resp = http.get(stack.url(), timeout=5)
            assert resp.status_code == 200, resp.text
            seen.add(resp.headers["X-Instance"])
    return seen == expected


def started_processes(stack: UpProcess) -> tuple[set[int], set[int]]:
    """Every pid the stack runs now (from its state file and /proc for HAProxy) and their process groups."""
    state = stack.state()
    pids = {stack.proc.pid, state["registry"]["pid"], state["templater"]["pid"]}
    pids |= {i["pid"] for group in state["instances"].values() for i in group}
    pids |= set(haproxy_pids(Path(state["haproxy"]["config"])))
    groups = {os.getpgid(pid) for pid in pids if process_alive(pid)}
    return pids, groups


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_all_gone(pids: set[int], groups: set[int], stack: UpProcess) -> None:
    left = sorted(p for p in pids if process_alive(p))
    assert not left, f"processes left running: {left}"
    assert not [g for g in groups if group_alive(g)], "a process group of the stack survived"
    assert haproxy_pids(stack.data_dir / "haproxy" / "haproxy.cfg") == []
    with socket.socket() as sock:  # HAProxy's front is closed
        assert sock.connect_ex(("127.0.0.1", stack.ports["front"])) != 0


def assert_secure_files(stack: UpProcess) -> None:
    """Issue 8's defaults: HAProxy's admin and master sockets 0600, rendered config 0644, no world-writable dir."""
    config = Path(stack.state()["haproxy"]["config"])
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    # the master socket moves to the temp dir when the stack's path is too long for HAProxy
    candidates = list(config.parent.iterdir()) + list(Path(tempfile.gettempdir()).glob("edgestack-*-master.sock"))
    sockets = [p for p in candidates if p.is_socket()]
    names = {p.name for p in sockets}
    assert any("master" in n for n in names) and any("admin" in n for n in names), names
    for sock in sockets:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600, sock
    for directory in [p for p in stack.data_dir.rglob("*") if p.is_dir()] + [stack.data_dir]:
        assert not stat.S_IMODE(directory.stat().st_mode) & 0o002, f"{directory} is world-writable"


def test_up_scale_stop_and_restart(up: UpProcess) -> None:
    up.start()
    web3 = {"web-1", "web-2", "web-3"}
    wait_until(lambda: instances_seen(up, web3), timeout=20, message="HAProxy to route to web-1..3")
    shown = up.output()
    for where in (f"HAProxy front   http://127.0.0.1:{up.ports['front']}/",
                  f"HAProxy stats   http://127.0.0.1:{up.ports['stats']}/stats",
                  f"registry HTTP   http://127.0.0.1:{up.ports['http']}/",
                  f"registry DNS    127.0.0.1:{up.ports['dns']}", "edgestack scale ",
                  "Ctrl-C stops everything"):
        assert where in shown, f"{where!r} missing from:\n{shown}"
    assert shown.count("passing") == 3 and "HAProxy backend web serves 3 servers" in shown
    pids, groups = started_processes(up)
    assert_secure_files(up)

    second = UpProcess(up.root)  # same directory, other ports: refused, and the running stack untouched
    second.data_dir = up.data_dir
    done = subprocess.run([sys.executable, "-m", "edgestack", "up", *second.flags()], capture_output=True,
                          text=True, cwd=up.root, env=up.env, timeout=60)
    assert done.returncode == 1 and "is already running" in done.stderr, done.stderr
    assert all(process_alive(pid) for pid in pids)

    out = up.scale("web", 5)
    assert "started web-4, web-5" in out
    wait_until(lambda: instances_seen(up, web3 | {"web-4", "web-5"}), timeout=20, message="5 instances")
    with requests.Session() as http:
        assert len(serving_servers(http, up.ports["stats"], "web")) == 5
    more, more_groups = started_processes(up)
    pids, groups = pids | more, groups | more_groups

    out = up.scale("web", 1)
    assert "stopped web-2, web-3, web-4, web-5" in out
    wait_until(lambda: instances_seen(up, {"web-1"}, rounds=5), timeout=20, message="only web-1")
    with requests.Session() as http:
        wait_until(lambda: len(serving_servers(http, up.ports["stats"], "web")) == 1, timeout=20,
                   message="HAProxy's backend web down to 1 server")
    assert [i["id"] for i in up.state()["instances"]["web"]] == ["web-1"]

    assert requests.put(up.registry("/v1/kv/stack/test"), data=b"kept", timeout=5).json() is True
    assert up.stop() == 0
    assert_all_gone(pids, groups, up)
    assert not (up.data_dir / "stack.json").exists()

    up.start("-no-demo")
    resp = requests.get(up.registry("/v1/kv/stack/test"), params={"raw": ""}, timeout=5)
    assert resp.status_code == 200 and resp.content == b"kept"
    assert up.state()["instances"] == {}
    pids, groups = started_processes(up)
    assert up.stop(signal.SIGINT) == 0
    assert_all_gone(pids, groups, up)


def test_taken_port_is_named_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = UpProcess(tmp_path)
        stack.ports["stats"] = port
        done = subprocess.run([sys.executable, "-m", "edgestack", "up", *stack.flags()], capture_output=True,
                              text=True, cwd=tmp_path, env=stack.env, timeout=60)
    assert done.returncode == 1
    assert f"port {port} (HAProxy stats, TCP) is already in use" in done.stderr
    assert "-stats-port" in done.stderr
    assert not (stack.data_dir / "registry").exists()
    assert not (stack.data_dir / "stack.json").exists()


def test_scale_without_a_running_stack(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "edgestack", "scale", "-data-dir", str(tmp_path / "none"),
                           "web", "2"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 1
    assert "no running `edgestack up` found" in done.stderr
