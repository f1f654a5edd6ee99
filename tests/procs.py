"""Real processes for end-to-end tests: free loopback ports, the agent, waiting helpers.

Every process started here binds 127.0.0.1 on a free port and is stopped by the fixture
that started it, so a test run never touches a running stack's 8500/8600.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


_handed_out: set[int] = set()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (DNS needs both), never the same one twice per run.

    The kernel may offer a just-released port again, so two calls in a row could otherwise collide.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            if port in _handed_out:
                continue
            _handed_out.add(port)
            return port


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
               message: str = "condition") -> object:
    """Poll predicate until it returns something truthy; fail the test with message after timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling through transient errors
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}" +
                         (f" (last error: {last_exc!r})" if last_exc else ""))


class AgentProcess:
    """One `python -m registry` process on free ports; restartable on the same data dir."""

    def __init__(self, data_dir: Path | None = None, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.extra_args = list(extra_args or [])
        self.env = env
        self.http_port = free_port()
        self.dns_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.http_addr}"

    def args(self) -> list[str]:
        store = ["-data-dir", str(self.data_dir)] if self.data_dir else ["-dev"]
        return [sys.executable, "-m", "registry", *store, "-http-port", str(self.http_port),
                "-dns-port", str(self.dns_port), "-node", "node1", *self.extra_args]

    def start(self, log_dir: Path | None = None, wait: bool = True) -> AgentProcess:
        log_dir = log_dir or (self.data_dir.parent if self.data_dir else Path("/tmp"))
        self.log_path = Path(log_dir) / f"agent-{self.http_port}.log"
        env = dict(os.environ, **(self.env or {}))
        env.pop("CONSUL_HTTP_ADDR", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        def ready() -> bool:
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            return requests.get(self.url + "/v1/status/leader", timeout=1).json() != ""
        wait_until(ready, timeout, message="agent ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def kill(self) -> None:
        """kill -9: no chance to flush anything that was not already durable."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> AgentProcess:
        self.stop()
        return self.start(self.log_path.parent if self.log_path else None)
