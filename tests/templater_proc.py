"""The templater as a real process for end-to-end tests: `python -m templater` on its own metrics port.

Shared by the templater's own e2e tests and the HAProxy ones (tests/test_haproxy_support.py), which
read the same Prometheus endpoint to observe renders, reloads and runtime updates from outside, as an
operator would. Like the agent in tests/procs.py, every process started here is stopped by stop().
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.procs import ROOT, free_port, wait_until


class TemplaterProcess:
    """One `python -m templater` with debug logging and metrics on 127.0.0.1:<free port>.

    stdout and stderr go to `log_path`, or stdout to `out_path` when given (for tests that read what
    the templater prints apart from what it logs). `CONSUL_HTTP_*` is dropped from the environment so
    a developer's shell never points a test at a real cluster.
    """

    START_TIMEOUT = 15.0
    STOP_TIMEOUT = 10.0

    def __init__(self, args: list[str], log_path: Path, out_path: Path | None = None,
                 env: dict[str, str] | None = None):
        self.metrics_port = free_port()
        self.log_path = log_path
        self.out_path = out_path
        self.env = dict(env or {})
        self.args = [sys.executable, "-m", "templater", *args, "-log-level", "debug",
                     "-metrics-addr", f"127.0.0.1:{self.metrics_port}"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> TemplaterProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_HTTP")}
        env.update(self.env)
        with contextlib.ExitStack() as files:
            log = files.enter_context(open(self.log_path, "ab"))
            if self.out_path is None:
                stdout, stderr = log, subprocess.STDOUT
            else:
                stdout, stderr = files.enter_context(open(self.out_path, "ab")), log
            self.proc = subprocess.Popen(self.args, stdout=stdout, stderr=stderr, cwd=ROOT, env=env)
        wait_until(lambda: self.metrics() is not None, self.START_TIMEOUT, message="templater metrics endpoint")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> dict[str, float] | None:
        """Every sample on /metrics by full name; fails the test at once if the templater has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"templater exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def metric(self, name: str) -> float:
        return (self.metrics() or {}).get(name, 0.0)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal the templater and wait; kill it if it does not exit in time. Returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(self.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
