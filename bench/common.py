"""Helpers every benchmark shares: free ports, managed processes, percentiles and the result table.

Benchmarks run on the same 2-core machine as their load generator, so the helpers are built to
cost little and to leave nothing behind: every process is started on 127.0.0.1 inside a context
manager that stops it (SIGTERM, then SIGKILL) and removes its scratch directory, even on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (the agent's DNS listener needs both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind((LOOPBACK, port))
            except OSError:
                continue
            return port


def raise_fd_limit(wanted: int = 16384) -> int:
    """Raise the soft open-files limit (inherited by children): 1,000 parked watchers need >1,024 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100); NaN for no values, so a missing figure is visible."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def cpu_probe(seconds: float = 0.5) -> float:
    """Share of one core a busy loop gets now: tells the reader how loaded the shared box was."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        pass
    return (time.process_time() - cpu0) / (time.perf_counter() - wall0)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll predicate (exceptions count as 'not yet') until truthy; RuntimeError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a server that is still starting refuses connections
            last = exc
        time.sleep(interval)
    detail = f" ({last!r})" if last else ""
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def http_get(url: str, timeout: float = 1.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URLs only
        return resp.read()


@dataclass
class Process:
    """One child process with its log file; stop() is idempotent and always reaps it."""

    name: str
    argv: list[str]
    workdir: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> Process:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=self.env, start_new_session=True)
        return self

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory for one run's data and logs, removed afterwards (set BENCH_KEEP=1 to keep it)."""
    path = Path(tempfile.mkdtemp(prefix=f"edgestack-bench-{prefix}-"))
    try:
        yield path
    finally:
        if os.environ.get("BENCH_KEEP"):
            print(f"(kept {path})")
        else:
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class Agent:
    """A running registry agent: its ports and process."""

    http_port: int
    dns_port: int
    process: Process
    data_dir: Path | None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"


@contextlib.contextmanager
def running_agent(workdir: Path, durable: bool = True, extra_args: Sequence[str] = (),
                  python_args: Sequence[str] = ()) -> Iterator[Agent]:
    """`python -m registry` on free ports with a fresh -data-dir (or -dev), stopped on exit.

    python_args go before `-m registry` (e.g. `-m cProfile -o out.prof` to profile the agent).
    """
    http_port, dns_port = free_port(), free_port()
    data_dir = workdir / "agent-data" if durable else None
    store = ["-data-dir", str(data_dir)] if data_dir else ["-dev"]
    argv = [sys.executable, *python_args, "-m", "registry", *store, "-http-port", str(http_port),
            "-dns-port", str(dns_port), "-client", LOOPBACK, "-node", "bench", *extra_args]
    env = dict(os.environ)
    env.pop("CONSUL_HTTP_ADDR", None)
    process = Process("agent", argv, workdir, env).start()
    agent = Agent(http_port, dns_port, process, data_dir)
    try:
        def ready() -> bool:
            process.check_alive()
            return http_get(agent.url + "/v1/status/leader") not in (b"", b'""')
        wait_until(ready, 30, "the registry agent to answer /v1/status/leader")
        yield agent
    finally:
        process.stop()


def templater_process(args: Sequence[str], workdir: Path, env: dict[str, str] | None = None) -> Process:
    """`python -m templater <args>` (not started yet), with `env` added to ours minus CONSUL_HTTP_*, so a
    developer's shell never points a benchmark's templater at a real cluster."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_HTTP")}
    clean.update(env or {})
    return Process("templater", [sys.executable, "-m", "templater", *args], workdir, clean)


def tool_path(name: str) -> str | None:
    """The path of a system tool (etcd, wrk, dnsperf ...), or None when it is not installed."""
    return shutil.which(name)


# ---------------------------------------------------------------------------------------- output


@dataclass
class Row:
    """One line of the result table; `met` is None when the figure has no target."""

    figure: str
    ours: str
    reference: str
    target: str
    met: bool | None = None


def fmt_rate(value: float) -> str:
    return "n/a" if value != value else f"{value:,.0f}/s"  # noqa: PLR0124 - NaN check


def fmt_ms(value: float) -> str:
    if value != value:  # noqa: PLR0124 - NaN check
        return "n/a"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def print_table(title: str, rows: Sequence[Row], reference_name: str = "reference") -> None:
    """Print "figure | ours | reference | target" as an aligned text table, then the targets missed."""
    header = ("figure", "ours", reference_name, "target")
    cells = [header] + [(r.figure, r.ours, r.reference, r.target + _mark(r.met)) for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(4)]
    print(f"\n{title}")
    for n, line in enumerate(cells):
        print(" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            print("-+-".join("-" * width for width in widths))
    judged = [r for r in rows if r.met is not None]
    missed = [r.figure for r in judged if not r.met]
    print(f"targets met: {len(judged) - len(missed)}/{len(judged)}" +
          (f"; missed: {', '.join(missed)}" if missed else ""))


def _mark(met: bool | None) -> str:
    return "" if met is None else ("  [met]" if met else "  [MISSED]")
