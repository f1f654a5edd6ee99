"""Benchmark: 1,000 HTTP checks at a 1 s interval against local backends (issue 3).

Figures: the agent's CPU share while it runs the checks (from /proc/<pid>/stat: utime + stime over
wall time) and the p99 lag of check runs behind their schedule (the agent's own measurement, read
from GET /debug/checks, see registry/checks.py). Targets on this machine: under half a core, p99
lag under 100 ms.

The backends are one aiohttp server in its own process with a route per check (/health/<n>), so
their CPU is not counted against the agent. Run: .venv/bin/python bench/checks_bench.py [-n 1000]
[-seconds 20] [-hung 0] (`-hung N` points N of the checks at a port that never answers, to show
that hung backends do not delay the others).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402 - after the path fix so `python bench/checks_bench.py` works
    LOOPBACK,
    Process,
    Row,
    cpu_probe,
    fmt_ms,
    free_port,
    http_get,
    print_table,
    raise_fd_limit,
    running_agent,
    scratch_dir,
    wait_until,
)

CPU_TARGET = 0.5  # cores
LAG_TARGET_MS = 100.0


def serve_backends(port: int) -> None:
    """The backend process: one aiohttp server answering 200 on /health/<n>."""
    from aiohttp import web

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health/{n}", health)
    web.run_app(app, host=LOOPBACK, port=port, print=None, access_log=None)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat (psutil is not installed here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _put(url: str, body: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT")
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
        resp.read()


def register_checks(agent_url: str, backend_port: int, count: int, hung_port: int, hung: int) -> None:
    def one(i: int) -> None:
        target = hung_port if i < hung else backend_port
        _put(agent_url + "/v1/agent/service/register", {
            "Name": f"svc{i % 50}", "ID": f"inst{i}", "Port": 10000 + i,
            "Check": {"HTTP": f"http://{LOOPBACK}:{target}/health/{i}", "Interval": "1s", "Timeout": "1s"}})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def debug_checks(agent_url: str) -> dict:
    return json.loads(http_get(agent_url + "/debug/checks", timeout=10))


def passing_count(agent_url: str) -> int:
    return len(json.loads(http_get(agent_url + "/v1/health/state/passing", timeout=10)))


def reset_lag(agent_url: str) -> None:
    req = urllib.request.Request(agent_url + "/debug/checks", method="DELETE")
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
        resp.read()


def run(count: int, seconds: float, hung: int) -> int:
    raise_fd_limit()
    load = cpu_probe()
    with scratch_dir("checks") as workdir:
        port = free_port()
        backend = Process("backends", [sys.executable, __file__, "--serve", str(port)], workdir).start()
        hung_sock = socket.socket()
        hung_sock.bind((LOOPBACK, 0))
        hung_sock.listen(4096)
        try:
            wait_until(lambda: http_get(f"http://{LOOPBACK}:{port}/health/0") == b"ok", 30, "the backends")
            with running_agent(workdir) as agent:
                started = time.monotonic()
                register_checks(agent.url, port, count, hung_sock.getsockname()[1], hung)
                took = time.monotonic() - started
                print(f"registered {count} services with an HTTP check each in {took:.1f}s")
                # +1: the agent's own serfHealth check is passing too
                wait_until(lambda: passing_count(agent.url) >= count - hung + 1, 60, "every check to pass")
                time.sleep(3)  # let the first-run spread settle into the steady schedule
                pid = agent.process.proc.pid
                reset_lag(agent.url)
                cpu0, wall0 = cpu_seconds(pid), time.monotonic()
                time.sleep(seconds)
                cpu1, wall1 = cpu_seconds(pid), time.monotonic()
                stats = debug_checks(agent.url)
                share = (cpu1 - cpu0) / (wall1 - wall0)
                runs_per_s = stats["window"] / (wall1 - wall0)
        finally:
            hung_sock.close()
            backend.stop()
    print(f"machine load probe: a busy loop got {load:.2f} of a core before the run")
    print(f"{stats['checks']} checks ran {runs_per_s:,.0f} probes/s over {seconds:.0f}s "
          f"(lag p50 {stats['lag_p50_ms']:.2f} ms, max {stats['lag_max_ms']:.1f} ms; "
          f"longest GC pause {stats['gc_longest_pause_ms']:.1f} ms)")
    rows = [
        Row(f"agent CPU, {count} HTTP checks @1s", f"{share:.2f} cores", "-", f"< {CPU_TARGET} core",
            share < CPU_TARGET),
        Row("p99 lag behind schedule", fmt_ms(stats["lag_p99_ms"]), "-", f"< {LAG_TARGET_MS:.0f} ms",
            stats["lag_p99_ms"] < LAG_TARGET_MS),
    ]
    title = f"checks_bench: {count} HTTP checks at 1s"
    if hung:
        title += f", {hung} of them against a hung backend"
    print_table(title, rows, reference_name="reference")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("-n", type=int, default=1000, help="number of HTTP checks (default 1000)")
    parser.add_argument("-seconds", type=float, default=20.0, help="measurement window (default 20)")
    parser.add_argument("-hung", type=int, default=0,
                        help="how many checks target a backend that never answers")
    args = parser.parse_args()
    if args.serve:
        serve_backends(args.serve)
        return 0
    return run(args.n, args.seconds, args.hung)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        asyncio.set_event_loop(asyncio.new_event_loop())
    sys.exit(main())
