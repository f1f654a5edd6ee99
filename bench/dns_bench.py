"""DNS benchmark (issue 4): SRV queries/s and p99 latency, the registry agent beside dnsmasq.

Both serve the same SRV records (S services × N instances, each with its A record), on 127.0.0.1,
measured one after the other in the same run with dnsperf (Debian package) on this machine, where
the load generator shares the two cores with the server:

- throughput: dnsperf closed loop (1 thread, <= 100 outstanding queries, EDNS0) for `--duration`
  seconds → qps; rounds alternate between the servers and the best qps of each counts;
- latency: dnsperf at a fixed rate (`--rate`, default 5,000 qps: 10× the 500 qps that 50 services ×
  10 proxies cost, haproxy.md §1.3) with `-v`, per-query latencies → p50/p99. dnsperf prints only
  the mean otherwise, and `-v` halves its own rate, so it is not used for throughput;
- the agent over TCP (pipelined) for information: dnsmasq forks per TCP connection, no comparison.

Targets: agent qps >= 50 % of dnsmasq's; agent p99 < 5 ms. dnsperf's socket buffers are raised
(`-b`) for both: with its default, the agent's batched replies overflowed dnsperf's own receive
buffer and counted as lost queries.

Run: `bash bench/run dns` or `.venv/bin/python -m bench.dns_bench [--services 10] [--instances 10]`.
When dnsperf or dnsmasq is missing it installs them with apt-get (dnsmasq-base: the binary without
the system service that would grab port 53); if that fails it shows the reference figures instead.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import dns.message
import dns.query
import requests

from bench.common import (
    LOOPBACK,
    Process,
    Row,
    cpu_probe,
    fmt_ms,
    fmt_rate,
    free_port,
    percentile,
    print_table,
    running_agent,
    scratch_dir,
    tool_path,
    wait_until,
)

#: Debian packages this benchmark wants (bench/run installs the missing ones).
APT_PACKAGES = ("dnsperf", "dnsmasq-base")

TARGET_RATIO = 0.5
TARGET_P99_MS = 5.0
SOCKET_BUFFER_KB = 2048
TARGET = "7f000001.addr.dc1.consul"  # the agent's SRV target for an instance with address 127.0.0.1
REFERENCE = "dnsmasq 2.90 here: 92,418 / 79,386 qps, dnsperf defaults (peers-and-performance.md §5.1)"


def ensure_tools() -> tuple[str, str] | None:
    """dnsperf and dnsmasq; apt-get install when missing (`apt-get update` only if that fails)."""
    def found() -> tuple[str | None, str | None]:
        return tool_path("dnsperf"), tool_path("dnsmasq") or tool_path("/usr/sbin/dnsmasq")

    dnsperf, dnsmasq = found()
    if not (dnsperf and dnsmasq):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", *APT_PACKAGES]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
        dnsperf, dnsmasq = found()
    return (dnsperf, dnsmasq) if dnsperf and dnsmasq else None


def records(services: int, instances: int) -> list[tuple[str, int]]:
    """(service, port) for every instance, all at 127.0.0.1."""
    return [(f"web{s}", 20000 + s * 100 + i) for s in range(services) for i in range(instances)]


def register(url: str, entries: list[tuple[str, int]]) -> None:
    with requests.Session() as session:
        for name, port in entries:
            body = {"Node": "bench", "Address": LOOPBACK, "SkipNodeUpdate": True,
                    "Service": {"ID": f"{name}-{port}", "Service": name, "Address": LOOPBACK, "Port": port}}
            session.put(url + "/v1/catalog/register", json=body, timeout=5).raise_for_status()


def start_dnsmasq(binary: str, workdir: Path, entries: list[tuple[str, int]]) -> tuple[Process, int]:
    """dnsmasq with the same SRV records and the targets' A record, authoritative for consul."""
    port = free_port()
    lines = ["no-hosts", "no-resolv", "local=/consul/", f"host-record={TARGET},{LOOPBACK}"]
    lines += [f"srv-host=_{name}._tcp.service.consul,{TARGET},{p},1,1" for name, p in entries]
    conf = workdir / "dnsmasq.conf"
    conf.write_text("\n".join(lines) + "\n")
    argv = [binary, "-k", "-C", str(conf), "-p", str(port), f"--listen-address={LOOPBACK}",
            "--bind-interfaces", "--user=root", f"--pid-file={workdir / 'dnsmasq.pid'}"]
    return Process("dnsmasq", argv, workdir).start(), port


def srv_set(port: int, name: str) -> list[tuple[int, str]]:
    query = dns.message.make_query(name, "SRV", use_edns=0, payload=4096)
    reply = dns.query.udp(query, LOOPBACK, port=port, timeout=1)
    return sorted((rr.port, rr.target.to_text()) for rr in reply.answer[0]) if reply.answer else []


def check_same_records(ports: dict[str, int], services: int) -> None:
    """Both servers must give the same SRV sets, or the comparison means nothing."""
    for s in range(services):
        name = f"_web{s}._tcp.service.consul"
        answers = {server: wait_until(lambda p=port, n=name: srv_set(p, n), 15, f"{server} answering {name}")
                   for server, port in ports.items()}
        if len({tuple(a) for a in answers.values()}) != 1:  # type: ignore[arg-type]
            raise RuntimeError(f"answers differ for {name}: {answers}")


def dnsperf(binary: str, port: int, queries: Path, *extra: str) -> str:
    argv = [binary, "-s", LOOPBACK, "-p", str(port), "-d", str(queries), "-T", "1", "-e",
            "-b", str(SOCKET_BUFFER_KB), *extra]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def throughput(binary: str, port: int, queries: Path, seconds: float, *extra: str) -> dict[str, float]:
    out = dnsperf(binary, port, queries, "-l", str(seconds), *extra)

    def grab(pattern: str) -> float:
        match = re.search(pattern, out)
        return float(match.group(1)) if match else float("nan")
    return {"qps": grab(r"Queries per second:\s+([\d.]+)"), "lost": grab(r"Queries lost:\s+(\d+)"),
            "avg_ms": grab(r"Average Latency \(s\):\s+([\d.]+)") * 1000}


def latency(binary: str, port: int, queries: Path, rate: int, seconds: float) -> list[float]:
    """Per-query latencies (ms) at a fixed rate, from dnsperf -v's one line per answer."""
    out = dnsperf(binary, port, queries, "-l", str(seconds), "-Q", str(rate), "-v")
    return [float(m.group(1)) * 1000 for m in re.finditer(r"^> \S+ .* ([\d.]+)$", out, re.M)]


def measure(perf: str, ports: dict[str, int], queries: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Alternating rounds; latency samples of all rounds are pooled (one p99 over everything measured)."""
    results: dict[str, dict] = {name: {"samples": [], "round_p99": []} for name in ports}
    for _ in range(args.rounds):
        for name, port in ports.items():
            for key, value in throughput(perf, port, queries, args.duration).items():
                results[name].setdefault(key, []).append(value)
            samples = latency(perf, port, queries, args.rate, args.latency_duration)
            results[name]["samples"] += samples
            results[name]["round_p99"].append(percentile(samples, 99))
    return results


def report(results: dict[str, dict], tcp: dict[str, float], args: argparse.Namespace, probe: float) -> None:
    ours, theirs = results["agent"], results["dnsmasq"]
    ratio = max(ours["qps"]) / max(theirs["qps"])
    p99 = {name: percentile(r["samples"], 99) for name, r in results.items()}
    p50 = {name: percentile(r["samples"], 50) for name, r in results.items()}
    rows = [
        Row("SRV qps, UDP + EDNS0 (best round)", fmt_rate(max(ours["qps"])), fmt_rate(max(theirs["qps"])),
            f">= {TARGET_RATIO:.0%} of dnsmasq ({ratio:.0%})", ratio >= TARGET_RATIO),
        Row(f"SRV p99 at {args.rate:,} qps (all rounds)", fmt_ms(p99["agent"]), fmt_ms(p99["dnsmasq"]),
            f"< {TARGET_P99_MS:g} ms", p99["agent"] < TARGET_P99_MS),
        Row("  p99 of each round", " / ".join(fmt_ms(v) for v in ours["round_p99"]),
            " / ".join(fmt_ms(v) for v in theirs["round_p99"]), ""),
        Row(f"SRV p50 at {args.rate:,} qps (all rounds)", fmt_ms(p50["agent"]), fmt_ms(p50["dnsmasq"]), ""),
        Row("mean latency at full rate (best round)", fmt_ms(min(ours["avg_ms"])),
            fmt_ms(min(theirs["avg_ms"])), ""),
        Row("queries lost (all rounds)", f"{sum(ours['lost']):.0f}", f"{sum(theirs['lost']):.0f}", ""),
        Row("SRV qps over TCP, pipelined", fmt_rate(tcp["qps"]), "not comparable (forks per connection)", ""),
    ]
    print_table(f"DNS SRV: {args.services} services x {args.instances} instances, dnsperf -T 1 -e, "
                f"{args.duration:g} s runs, {args.rounds} alternating rounds", rows, "dnsmasq")
    print(f"(reference: {REFERENCE}; a busy loop got {probe:.2f} of a core before the run)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.dns_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--duration", type=float, default=float(os.environ.get("BENCH_SECONDS", "8")),
                        help="seconds per throughput run")
    parser.add_argument("--rate", type=int, default=5000, help="qps of the latency runs")
    parser.add_argument("--latency-duration", type=float, default=5.0, help="seconds per latency run")
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tools = ensure_tools()
    if tools is None:
        print(f"dnsperf/dnsmasq could not be installed: nothing measured. Reference: {REFERENCE}")
        return 0
    perf, dnsmasq_bin = tools
    probe = cpu_probe()
    entries = records(args.services, args.instances)
    with scratch_dir("dns") as workdir, running_agent(workdir, durable=False,
                                                      extra_args=["-log-level", "WARN"]) as agent:
        register(agent.url, entries)
        masq, masq_port = start_dnsmasq(dnsmasq_bin, workdir, entries)
        try:
            queries = workdir / "queries.txt"
            queries.write_text("".join(f"_web{s}._tcp.service.consul SRV\n" for s in range(args.services)))
            ports = {"dnsmasq": masq_port, "agent": agent.dns_port}
            check_same_records(ports, args.services)
            started = time.monotonic()
            results = measure(perf, ports, queries, args)
            tcp = throughput(perf, agent.dns_port, queries, args.duration, "-m", "tcp")
        finally:
            masq.stop()
    report(results, tcp, args, probe)
    print(f"(measured in {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
