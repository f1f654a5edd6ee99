"""HAProxy convergence benchmark (issue 6): how fast HAProxy follows the registry, per apply mode.

For each mode (`runtime`, `reload`, `dns`) a real agent, `python -m templater` supervising a real
HAProxy 2.8 (shipped templates), and real HTTP backends (one helper process, one port per instance)
run while a load generator sends keep-alive requests through HAProxy and records which instance
answered each one and when. 100 scale events (add or remove one instance, 2 to 6 instances live):
- add: registry write (just before the PUT) → first response served by the new instance;
- remove: registry write → last response served by the removed instance (0 if none after the write);
- reloads per 100 events (`show proc` on the master CLI); failed requests (anything but 200).
Targets: runtime p99 < 250 ms with 0 reloads; dns p99 < 2 s; 0 failed requests in every mode. The
reference column is the reload mode's figure: what consul-template + a reload command gives.

Run: `.venv/bin/python -m bench.haproxy_bench [--events 100] [--modes runtime,reload,dns]`.
"""

from __future__ import annotations

import argparse
import bisect
import random
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import requests

from bench.common import (
    ROOT,
    Process,
    Row,
    cpu_probe,
    fmt_ms,
    free_port,
    percentile,
    print_table,
    running_agent,
    scratch_dir,
    templater_process,
    wait_until,
)
from templater.haproxy.mastercli import MasterCLI
from templater.haproxy.runtime import RuntimeAPI

POOL = 8
LOW, HIGH = 2, 6

# One process serving every instance: its own label on its own port, HTTP/1.1 keep-alive.
BACKENDS = """
import http.server, socketserver, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    def do_GET(self):
        body = self.server.label.encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    def handle_error(self, *a): pass
for i, port in enumerate(sys.argv[1:]):
    s = S(("127.0.0.1", int(port)), H); s.label = f"web-{i}"
    threading.Thread(target=s.serve_forever, daemon=True).start()
threading.Event().wait()
"""


class Load:
    """Keep-alive request loops through HAProxy; per instance label, the sorted completion times."""

    def __init__(self, url: str, threads: int = 3):
        self.url = url
        self.seen: dict[str, list[float]] = defaultdict(list)
        self.failed: list[str] = []
        self.total = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                reply = session.get(self.url, headers={"Host": "web.local"}, timeout=5)
                done = time.monotonic()
                with self._lock:
                    self.total += 1
                    if reply.status_code == 200:
                        bisect.insort(self.seen[reply.text], done)
                    else:
                        self.failed.append(str(reply.status_code))
            except requests.RequestException as exc:
                with self._lock:
                    self.total += 1
                    self.failed.append(type(exc).__name__)
                session = requests.Session()

    def first_after(self, label: str, since: float) -> float | None:
        with self._lock:
            times = self.seen[label]
            index = bisect.bisect_right(times, since)
            return times[index] if index < len(times) else None

    def last(self, label: str) -> float | None:
        with self._lock:
            times = self.seen[label]
            return times[-1] if times else None


class Edge:
    """The templater process (HCL config) supervising HAProxy in `run`."""

    def __init__(self, run: Path, agent_http: int, agent_dns: int, mode: str):
        self.run = run
        self.http_port, self.stats_port = free_port(), free_port()
        self.master = MasterCLI(str(run / "haproxy-master.sock"))
        self.admin = RuntimeAPI(str(run / "haproxy-admin.sock"))
        template = "haproxy-dns.cfg.j2" if mode == "dns" else "haproxy.cfg.j2"
        (run / "edge.hcl").write_text(
            f'consul {{\n  address = "127.0.0.1:{agent_http}"\n}}\n'
            f'template {{\n  source = "{ROOT / "templates" / template}"\n  destination = "{run / "haproxy.cfg"}"\n}}\n'
            f'haproxy {{\n  mode = "{mode}"\n  http_port = {self.http_port}\n  stats_port = {self.stats_port}\n'
            f'  dns_addr = "127.0.0.1:{agent_dns}"\n  drain_timeout = 2\n}}\n')
        env = {"EDGESTACK_HTTP_PORT": str(self.http_port), "EDGESTACK_STATS_PORT": str(self.stats_port),
               "EDGESTACK_DNS_ADDR": f"127.0.0.1:{agent_dns}"}
        self.process = templater_process(["-config", str(run / "edge.hcl")], run, env)

    def live_ports(self) -> set[int]:
        return {s.port for s in self.admin.servers_state("web") if s.serving and s.port}


def register(agent_url: str, index: int, port: int) -> None:
    requests.put(f"{agent_url}/v1/agent/service/register", timeout=5, json={
        "Name": "web", "ID": f"web-{index}", "Address": "127.0.0.1", "Port": port,
        "Meta": {"edge-host": "web.local"}, "Check": {"TTL": "3600s", "Status": "passing"}}).raise_for_status()


def deregister(agent_url: str, index: int) -> None:
    requests.put(f"{agent_url}/v1/agent/service/deregister/web-{index}", timeout=5).raise_for_status()


def run_mode(mode: str, events: int, seed: int) -> dict[str, object]:
    """One mode end to end; returns the measured figures."""
    rng = random.Random(seed)
    with scratch_dir(f"haproxy-{mode}") as run, running_agent(run, durable=False) as agent:
        ports = [free_port() for _ in range(POOL)]
        backends = Process("backends", [sys.executable, "-c", BACKENDS, *map(str, ports)], run).start()
        edge = Edge(run, agent.http_port, agent.dns_port, mode)
        load: Load | None = None
        try:
            live = set(range(LOW + 1))
            for index in sorted(live):
                register(agent.url, index, ports[index])
            edge.process.start()
            expected = {ports[i] for i in live}
            wait_until(lambda: edge.live_ports() == expected, 30, f"{mode}: HAProxy serving the first instances")
            load = Load(f"http://127.0.0.1:{edge.http_port}/").start()
            wait_until(lambda: load.total > 50, 30, "load running")
            reloads_before = edge.master.show_proc().reloads
            adds, removes = [], []
            for _ in range(events):
                grow = len(live) <= LOW or (len(live) < HIGH and rng.random() < 0.5)
                if grow:
                    index = rng.choice(sorted(set(range(POOL)) - live))
                    written = time.monotonic()
                    register(agent.url, index, ports[index])
                    live.add(index)
                    first = wait_until(lambda i=index, t=written: load.first_after(f"web-{i}", t), 30,
                                       f"{mode}: first request to web-{index}")
                    adds.append(first - written)
                else:
                    index = rng.choice(sorted(live))
                    written = time.monotonic()
                    deregister(agent.url, index)
                    live.discard(index)
                    wait_until(lambda p=ports[index]: p not in edge.live_ports(), 30,
                               f"{mode}: web-{index} out of HAProxy")
                    time.sleep(0.05)  # let responses already in flight land
                    last = load.last(f"web-{index}")
                    removes.append(max(0.0, (last or 0.0) - written))
                time.sleep(0.05)
            reloads = edge.master.show_proc().reloads - reloads_before
        finally:
            if load is not None:
                load.stop()
            edge.process.stop()
            backends.stop()
        failures = list(load.failed) if load else []
        return {"adds": adds, "removes": removes, "reloads": reloads, "events": events, "failed": len(failures),
                "failures": failures, "requests": load.total if load else 0}


def p(values: list[float], pct: float) -> float:
    return percentile(values, pct) * 1000


def report(results: dict[str, dict[str, object]]) -> None:
    rows: list[Row] = []
    targets = {"runtime": 250.0, "dns": 2000.0}
    ref = results.get("reload")
    for mode, r in results.items():
        adds, removes = r["adds"], r["removes"]  # type: ignore[assignment]
        both = list(adds) + list(removes)  # type: ignore[arg-type]
        limit = targets.get(mode)
        for label, values, key in (("add → first request", adds, "adds"), ("remove → last request", removes,
                                                                             "removes")):
            ref_values = ref[key] if ref and mode != "reload" else None  # type: ignore[index]
            rows.append(Row(f"{mode}: {label} p50 / p99 ({len(values)})",  # type: ignore[arg-type]
                            f"{fmt_ms(p(values, 50))} / {fmt_ms(p(values, 99))}",  # type: ignore[arg-type]
                            f"{fmt_ms(p(ref_values, 50))} / {fmt_ms(p(ref_values, 99))}" if ref_values else "-",
                            f"p99 < {limit:.0f} ms" if limit else "-",
                            None if limit is None else p(both, 99) < limit))
        per_100 = 100 * r["reloads"] / max(1, r["events"])  # type: ignore[operator]
        rows.append(Row(f"{mode}: reloads per 100 scale events", f"{per_100:.0f}",
                        f"{100 * ref['reloads'] / max(1, ref['events']):.0f}" if ref and mode != "reload" else "-",
                        "0" if mode == "runtime" else "-", per_100 == 0 if mode == "runtime" else None))
        kinds = ", ".join(sorted(set(r["failures"]))) if r["failures"] else ""  # type: ignore[arg-type]
        rows.append(Row(f"{mode}: failed requests / requests",
                        f"{r['failed']} / {r['requests']:,}" + (f" ({kinds})" if kinds else ""), "-", "0",
                        r["failed"] == 0))
    print_table("HAProxy convergence (registry write → traffic), 2-core shared machine", rows,
                "reload mode (consul-template style)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--modes", default="runtime,reload,dns")
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args(argv)
    print(f"cpu probe: this process got {cpu_probe():.0%} of a core before the run")
    results = {}
    for mode in args.modes.split(","):
        started = time.monotonic()
        results[mode] = run_mode(mode, args.events, args.seed)
        print(f"{mode}: {args.events} events in {time.monotonic() - started:.0f}s")
    report(results)


if __name__ == "__main__":
    main()
