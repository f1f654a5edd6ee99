"""Templater benchmark: render time and peak memory by catalog size, and registry write → file latency.

Issue 5's figures:
- render time and peak memory for 100 / 1,000 / 10,000 services × 5 instances, from responses in
  Consul's documented /v1/health/service shape (parsed by the templater's own parser), rendering
  a plain servers template and the shipped templates/haproxy.cfg.j2 and haproxy-dns.cfg.j2 (routing
  Meta on every service and some KV fragments, so the routes and fragments they build are exercised),
  and how render time grows from 1,000 to 10,000 services (linear: x10);
- the time from a registry write (PUT /v1/agent/service/register returns) to the new file on
  disk, p50/p99 over N events with wait 0, against a real agent and `python -m templater`.
Targets: 1,000 services rendered in < 200 ms; write → file p99 < 100 ms. consul-template publishes
no such figures (consul-template.md §6); its fixed 100 ms per-view fetch floor is the nearest one.

Run: `.venv/bin/python -m bench.templater_bench [--sizes 100,1000,10000] [--events 100] [--templates DIR]`
(--templates: time an edited copy of templates/, e.g. to compare before/after a change).
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    ROOT,
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
from templater.config import HAProxySettings, TemplateConfig, haproxy_variables
from templater.dependencies import (
    CatalogServicesQuery,
    Dependency,
    HealthServiceQuery,
    KVKeyQuery,
    KVPrefixQuery,
)
from templater.render import TemplateRenderer

INSTANCES = 5
SERVERS_TEMPLATE = """{% for s in services() %}
backend {{ s.name|sanitize }}
    balance roundrobin
{% for i in service(s.name) %}
    server {{ (i.node ~ "-" ~ i.id)|sanitize }} {{ i.address }}:{{ i.port }} weight {{ i.weights.passing }}
{% endfor %}

{% endfor %}
"""


def edge_meta(service: int) -> dict[str, str]:
    """Routing Meta as operators set it (README, "HAProxy: the shipped templates"): every service routed by
    host, every third also by path, every tenth TCP on a port of its own."""
    if service % 10 == 5:
        return {"version": "1", "edge-mode": "tcp", "edge-port": str(30000 + service)}
    meta = {"version": "1", "edge-host": f"svc-{service:05d}.example, www.svc-{service:05d}.example"}
    if service % 3 == 0:
        meta["edge-path"] = f"/api/v{service % 4}, /svc-{service:05d}"
    return meta


def kv_fragments(services: int) -> dict[str, list[dict[str, Any]]]:
    """/v1/kv/<prefix>?recurse answers: a fragment for every tenth backend, and one for the http frontend."""
    def pair(key: str, text: str) -> dict[str, Any]:
        return {"Key": key, "Value": base64.b64encode(text.encode()).decode(), "Flags": 0}
    backends = [pair(f"haproxy/backends/svc-{i:05d}", "http-response set-header X-Edge-Service yes\nretries 2")
                for i in range(0, services, 10)]
    frontends = [pair("haproxy/frontends/http", "option httplog\nhttp-request set-header X-Edge yes")]
    return {"haproxy/backends/": backends, "haproxy/frontends/": frontends}


def health_response(service: int) -> list[dict[str, Any]]:
    """One /v1/health/service/<name> answer in Consul's documented shape."""
    name = f"svc-{service:05d}"
    entries = []
    for n in range(INSTANCES):
        node = {"ID": f"00000000-0000-0000-0000-{n:012d}", "Node": f"node-{n}", "Address": f"10.0.{n}.1",
                "Datacenter": "dc1", "TaggedAddresses": {"lan": f"10.0.{n}.1", "wan": f"10.0.{n}.1"},
                "Meta": {"rack": f"r{n}"}, "CreateIndex": 5, "ModifyIndex": 5}
        sid = f"{name}-{n}"
        entries.append({
            "Node": node,
            "Service": {"ID": sid, "Service": name, "Tags": ["v1", "http"], "Address": f"10.1.{n}.{service % 250}",
                        "TaggedAddresses": {}, "Meta": edge_meta(service), "Port": 20000 + service % 40000,
                        "Weights": {"Passing": 1 + n, "Warning": 1}, "EnableTagOverride": False,
                        "CreateIndex": 7, "ModifyIndex": 7},
            "Checks": [{"Node": node["Node"], "CheckID": "serfHealth", "Name": "Serf Health Status",
                        "Status": "passing", "Notes": "", "Output": "Agent alive and reachable", "ServiceID": "",
                        "ServiceName": "", "ServiceTags": [], "Type": "", "CreateIndex": 5, "ModifyIndex": 5},
                       {"Node": node["Node"], "CheckID": f"service:{sid}", "Name": f"Service '{name}' check",
                        "Status": "passing", "Notes": "", "Output": "HTTP GET: 200 OK", "ServiceID": sid,
                        "ServiceName": name, "ServiceTags": ["v1", "http"], "Type": "http",
                        "CreateIndex": 8, "ModifyIndex": 8}],
        })
    return entries


class Catalog:
    """A DataSource answering every query from pre-parsed data (no I/O inside the timed render)."""

    def __init__(self, services: int):
        raw_services = {f"svc-{i:05d}": ["v1", "http"] for i in range(services)}
        raw_health = {f"svc-{i:05d}": json.dumps(health_response(i)) for i in range(services)}
        started = time.perf_counter()
        self.values: dict[Dependency, Any] = {CatalogServicesQuery(): CatalogServicesQuery.parse(raw_services)}
        for prefix, pairs in kv_fragments(services).items():
            self.values[KVPrefixQuery(prefix)] = KVPrefixQuery(prefix).parse(pairs)
        self.any: dict[str, list] = {}
        for name, body in raw_health.items():
            instances = HealthServiceQuery(name, None, ("any",)).parse(json.loads(body))
            self.any[name] = instances
            self.values[HealthServiceQuery(name)] = [i for i in instances if i.status == "passing"]
        self.parse_seconds = time.perf_counter() - started

    def lookup(self, dependency: Dependency) -> tuple[bool, Any]:
        if dependency in self.values:
            return True, self.values[dependency]
        if isinstance(dependency, HealthServiceQuery):
            instances = self.any.get(dependency.name, [])
            if "any" not in dependency.states:
                instances = [i for i in instances if i.status in dependency.states]
            return True, instances
        if isinstance(dependency, KVPrefixQuery):
            return True, []
        if isinstance(dependency, KVKeyQuery):
            return True, None
        return True, []


def time_render(renderer: TemplateRenderer, catalog: Catalog, variables: dict[str, Any],
                repeats: int) -> tuple[float, int, int]:
    """Median render seconds, output bytes, and dependencies read."""
    times, result = [], None
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        result = renderer.render(catalog, variables)
        times.append(time.perf_counter() - started)
    assert result is not None
    if not result.complete:
        raise RuntimeError(f"render incomplete: {result.error or list(result.missing)[:3]}")
    return statistics.median(times), len(result.text or ""), len(result.used)


def render_figures(sizes: list[int], template_dir: Path) -> list[Row]:
    rows: list[Row] = []
    templates = [("servers template", TemplateConfig(destination="/dev/null", contents=SERVERS_TEMPLATE))]
    for name in ("haproxy.cfg.j2", "haproxy-dns.cfg.j2"):
        if (template_dir / name).exists():
            templates.append((f"templates/{name}", TemplateConfig(destination="/dev/null",
                                                                  source=str(template_dir / name))))
    timings: dict[tuple[str, int], float] = {}
    variables = {"haproxy": haproxy_variables(HAProxySettings(config="/dev/null"))}
    for size in sizes:
        tracemalloc.start()
        catalog = Catalog(size)
        parsed = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        catalog = Catalog(size)  # again without tracemalloc, which slows allocation several-fold
        rows.append(Row(f"parse {size:,} services x {INSTANCES} (health JSON → dataclasses)",
                        fmt_ms(catalog.parse_seconds * 1000), "-", "-"))
        for label, config in templates:
            renderer = TemplateRenderer(config)
            renderer.compile()
            seconds, size_bytes, deps = time_render(renderer, catalog, variables, 1 if size >= 10000 else 3)
            timings[label, size] = seconds
            tracemalloc.start()
            renderer.render(catalog, variables)
            render_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            target = "< 200 ms" if size == 1000 else "-"
            met = (seconds < 0.2) if size == 1000 else None
            rows.append(Row(f"render {size:,} x {INSTANCES}: {label} ({size_bytes / 1e6:.1f} MB out, {deps:,} deps)",
                            fmt_ms(seconds * 1000), "no published figure", target, met))
            rows.append(Row("  memory: parsed catalog held / peak extra during one render",
                            f"{parsed / 2**20:.1f} / {render_peak / 2**20:.1f} MiB", "-", "-"))
        del catalog
        gc.collect()
    return rows + scaling_rows(timings, [label for label, _ in templates])


def scaling_rows(timings: dict[tuple[str, int], float], labels: list[str]) -> list[Row]:
    """Render time 10,000 / 1,000 services: x10 is linear; a quadratic template shows x20 and more."""
    return [Row(f"scaling 1,000 → 10,000 services: {label}",
                f"x{timings[label, 10000] / timings[label, 1000]:.1f}", "-", "≈ x10 (linear)")
            for label in labels if (label, 1000) in timings and (label, 10000) in timings]


def register(url: str, sid: str, port: int) -> None:
    body = {"Name": "bench", "ID": sid, "Address": "127.0.0.1", "Port": port,
            "Check": {"CheckID": f"service:{sid}", "TTL": "3600s", "Status": "passing"}}
    requests.put(f"{url}/v1/agent/service/register", json=body, timeout=10).raise_for_status()


def deregister(url: str, sid: str) -> None:
    requests.put(f"{url}/v1/agent/service/deregister/{sid}", timeout=10).raise_for_status()


def latency_figures(events: int) -> list[Row]:
    """Registry write → new bytes in the destination, with the templater as a real process."""
    with scratch_dir("templater") as work, running_agent(work, durable=True) as agent:
        source, dest = work / "bench.j2", work / "bench.out"
        source.write_text("{% for i in service('bench') %}{{ i.id }} {{ i.port }}\n{% endfor %}")
        register(agent.url, "bench-0", 30000)
        templater = templater_process(["-consul-addr", agent.url[7:], "-template", f"{source}:{dest}", "-wait", "0",
                                       "-log-level", "warn", "-metrics-addr", f"127.0.0.1:{free_port()}"],
                                      work).start()
        try:
            wait_until(lambda: dest.exists() and "bench-0" in dest.read_text(), 30, "the first render")
            samples = []
            for n in range(1, events + 1):
                templater.check_alive()
                sid = f"bench-{n}"
                started = time.perf_counter()
                if n % 2:
                    register(agent.url, sid, 30000 + n)
                    expect = lambda text, sid=sid: f"{sid} " in text  # noqa: E731
                else:
                    deregister(agent.url, f"bench-{n - 1}")
                    expect = lambda text, old=f"bench-{n - 1} ": old not in text  # noqa: E731
                while not expect(_read(dest)):
                    if time.perf_counter() - started > 10:
                        raise RuntimeError(f"event {n} did not reach {dest}:\n{templater.log_tail()}")
                    time.sleep(0.0005)
                samples.append((time.perf_counter() - started) * 1000)
        finally:
            templater.stop()
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    return [Row(f"registry write → file on disk, p50 ({len(samples)} events, wait 0)", fmt_ms(p50),
                "consul-template: ≥100 ms fetch floor per view", "-"),
            Row("registry write → file on disk, p99", fmt_ms(p99), "-", "< 100 ms", p99 < 100),
            Row("registry write → file on disk, max", fmt_ms(max(samples)), "-", "-")]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="catalog sizes (services)")
    parser.add_argument("--events", type=int, default=100, help="registry writes for the latency figure")
    parser.add_argument("--templates", type=Path, default=ROOT / "templates",
                        help="directory holding the shipped templates to time (default: templates/)")
    args = parser.parse_args(argv)
    print(f"cpu share of one core available now: {cpu_probe():.0%}")
    rows = render_figures([int(s) for s in args.sizes.split(",") if s], args.templates)
    if args.events > 0:
        rows += latency_figures(args.events)
    print_table("templater: render and write → file", rows, "reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
