"""Real backends for the check tests (HTTP and TCP servers on free 127.0.0.1 ports), plus unit tests
of the pieces of registry.checks that need no process: thresholds, addresses and lag percentiles.

The backends run in threads of the test process so a test can kill one (close its listening
socket) and bring it back on the same port; every one is stopped by the fixture or test that made it.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
import time
from typing import Any

import pytest
import requests

from registry.checks import LagStats, StatusGate, split_host_port
from tests.procs import AgentProcess, free_port, wait_until


class _ServedBackend:
    """What the HTTP and TCP backends share: a threaded server on 127.0.0.1:<port> that stop() closes and
    start() can open again on the same port (so a test can take a backend down and bring it back)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.server: socketserver.TCPServer | None = None
        self.thread: threading.Thread | None = None

    def _serve(self, server_class: type[socketserver.TCPServer],
               handler: type[socketserver.BaseRequestHandler]) -> None:
        server_class.allow_reuse_address = True
        self.server = server_class(("127.0.0.1", self.port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class HTTPBackend(_ServedBackend):
    """A real HTTP server whose answer code can be changed; stop() closes its port, start() reopens it."""

    def __init__(self, port: int | None = None):
        super().__init__(port)
        self.code = 200
        self.body = b"ok"
        self.requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def start(self) -> HTTPBackend:
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                backend.requests += 1
                self.send_response(backend.code)
                self.send_header("Content-Length", str(len(backend.body)))
                self.end_headers()
                self.wfile.write(backend.body)

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self._serve(http.server.ThreadingHTTPServer, Handler)
        return self


class TCPBackend(_ServedBackend):
    """A real TCP listener that accepts and closes; stop() closes the port."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TCPBackend:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                pass

        self._serve(socketserver.ThreadingTCPServer, Handler)
        return self


class HungBackend:
    """Accepts connections (the kernel completes the handshake) and never answers a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]

    def stop(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------- helpers for the e2e tests


def register(agent: AgentProcess, body: dict) -> requests.Response:
    return requests.put(agent.url + "/v1/agent/service/register", json=body, timeout=5)


def check_status(agent: AgentProcess, check_id: str) -> str | None:
    checks = requests.get(agent.url + "/v1/agent/checks", timeout=5).json()
    return checks[check_id]["Status"] if check_id in checks else None


def check_record(agent: AgentProcess, check_id: str) -> dict:
    return requests.get(agent.url + "/v1/agent/checks", timeout=5).json()[check_id]


def passing_ids(agent: AgentProcess, service: str) -> list[str]:
    entries = requests.get(agent.url + f"/v1/health/service/{service}?passing", timeout=5).json()
    return [e["Service"]["ID"] for e in entries]


def wait_status(agent: AgentProcess, check_id: str, status: str, timeout: float = 10.0) -> float:
    """Poll until the check has status; returns how long that took (seconds)."""
    started = time.monotonic()
    wait_until(lambda: check_status(agent, check_id) == status, timeout, interval=0.05,
               message=f"check {check_id} to be {status}")
    return time.monotonic() - started


# ---------------------------------------------------------------------------- unit tests


def test_gate_success_before_passing_and_failures_before_critical() -> None:
    gate = StatusGate({"success_before_passing": 2, "failures_before_critical": 3})
    assert gate.admit("passing", "a") is None
    assert gate.admit("passing", "b") == ("passing", "b")
    assert gate.admit("critical", "x") is None
    assert gate.admit("critical", "y") is None
    assert gate.admit("passing", "c") is None  # a success resets the failure count...
    assert gate.admit("critical", "x") is None
    assert gate.admit("critical", "x") is None
    assert gate.admit("critical", "z") == ("critical", "z")  # ...so it takes three in a row


def test_gate_failures_before_warning_and_defaults() -> None:
    gate = StatusGate({"failures_before_warning": 1, "failures_before_critical": 2})
    assert gate.admit("critical", "x") == ("warning", "x")
    assert gate.admit("critical", "y") == ("critical", "y")
    plain = StatusGate({})
    assert plain.admit("warning", "w") == ("warning", "w")
    assert plain.admit("critical", "c") == ("critical", "c")


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:80") == ("127.0.0.1", 80)
    assert split_host_port("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ValueError):
        split_host_port("localhost")


def test_lag_percentiles() -> None:
    stats = LagStats(window=100)
    for ms in range(1, 101):
        stats.record(ms / 1000)
    assert stats.percentile(50) == pytest.approx(0.050)
    assert stats.percentile(99) == pytest.approx(0.099)
    assert stats.percentile(100) == pytest.approx(0.100)
    stats.record(-1.0)  # a wake-up before the due time counts as no lag
    assert min(stats.recent) == 0.0
