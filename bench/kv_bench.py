"""KV and blocking-query benchmark: the registry beside a single-node etcd, in one run, with one client.

Issue 2's figures: durable PUT and GET throughput with 1 and 32 concurrent clients (256-byte
values), and blocking-query wake-up latency for 1 watcher and for 1,000 watchers parked on one
key. Both servers run at once on 127.0.0.1 (the registry with a fresh SQLite -data-dir, etcd
with a fresh --data-dir), and the *same* client code drives both - an asyncio aiohttp client for
throughput, hand-driven HTTP/1.1 connections for wake-ups - so the client's share of the two
cores is the same on both sides. wrk, when installed, gives a second, cheaper-client view.

Run: `bash bench/run kv` (or `.venv/bin/python -m bench.kv_bench`; `--profile` profiles the agent).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import (
    LOOPBACK,
    Process,
    Row,
    cpu_probe,
    fmt_ms,
    fmt_rate,
    free_port,
    http_get,
    percentile,
    print_table,
    raise_fd_limit,
    running_agent,
    scratch_dir,
    tool_path,
    wait_until,
)

#: Debian packages this benchmark wants (bench/run installs the missing ones).
APT_PACKAGES = ("etcd-server", "wrk")

VALUE_SIZE = 256
KEY_COUNT = 1024
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
CONCURRENCY = (1, 32)
WATCHERS = int(os.environ.get("BENCH_WATCHERS", "1000"))
FANOUT_ROUNDS = 5
TARGET_WAKE_ONE_P99_MS = 5.0
TARGET_WAKE_LAST_MS = 100.0

#: Shown (and judged against, the higher of the two runs) only when etcd cannot run here: the
#: reference note §5.1, runs A / B. The asyncio-client rows get aetcd's figures (a Python asyncio
#: client at the same concurrency), the wrk rows wrk's (at 2 and 32 connections).
REFERENCE_NOTE = "shared/reference/peers-and-performance.md §5.1"
FALLBACK: dict[tuple[str, int], tuple[float, str]] = {
    ("put", 1): (1150, "883 / 1,150/s (aetcd)"), ("put", 32): (6108, "6,108 / 5,718/s (aetcd)"),
    ("get", 1): (1558, "1,558 / 1,501/s (aetcd)"), ("get", 32): (5633, "5,633 / 5,181/s (aetcd)"),
    ("wrk put", 1): (2587, "2,587 / 2,190/s (wrk c2)"), ("wrk put", 32): (6780, "6,444 / 6,780/s (wrk)"),
    ("wrk get", 1): (4506, "4,435 / 4,506/s (wrk c2)"), ("wrk get", 32): (7851, "7,851 / 7,420/s (wrk)"),
    ("wake1", 50): (0.81, "0.81 / 0.80 ms (aetcd)"), ("wake1", 99): (2.29, "1.71 / 2.29 ms (aetcd)"),
    ("ack1", 99): (float("nan"), "n/a"), ("wakeN", 99): (float("nan"), "n/a"),
    ("wakeN", 100): (28.8, "100 watchers: 28.8 / 15.3 ms"),
}


# ------------------------------------------------------------------------------------ the two dialects


@dataclass(frozen=True)
class Request:
    """One pre-encoded request, so encoding costs nothing inside the measured loop."""

    method: str
    url: str
    body: bytes | None


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _raw(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Length: {len(body)}\r\n"
    if body:
        head += "Content-Type: application/octet-stream\r\n"
    return head.encode() + b"\r\n" + body


@dataclass(frozen=True)
class RegistryKV:
    """The registry's Consul KV API: PUT /v1/kv/<key> with the raw value, GET returns JSON + base64."""

    port: int
    name: str = "registry"

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def put(self, key: str, value: bytes) -> Request:
        return Request("PUT", f"{self.base}/v1/kv/{key}", value)

    def get(self, key: str) -> Request:
        return Request("GET", f"{self.base}/v1/kv/{key}", None)

    def raw_put(self, key: str, value: bytes) -> bytes:
        return _raw("PUT", f"/v1/kv/{key}", value)

    def raw_watch(self, key: str, index: int) -> bytes:
        return _raw("GET", f"/v1/kv/{key}?index={index}&wait=60s")

    @staticmethod
    def value_of(body: bytes) -> bytes:
        return base64.b64decode(json.loads(body)[0]["Value"])


@dataclass(frozen=True)
class EtcdKV:
    """etcd's v3 JSON gateway: POST /v3/kv/put and /v3/kv/range, keys and values in base64."""

    port: int
    name: str = "etcd"

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def put(self, key: str, value: bytes) -> Request:
        return Request("POST", f"{self.base}/v3/kv/put", self._put_body(key, value))

    def get(self, key: str) -> Request:
        return Request("POST", f"{self.base}/v3/kv/range", json.dumps({"key": _b64(key)}).encode())

    def raw_put(self, key: str, value: bytes) -> bytes:
        return _raw("POST", "/v3/kv/put", self._put_body(key, value))

    def raw_watch(self, key: str) -> bytes:
        return _raw("POST", "/v3/watch", json.dumps({"create_request": {"key": _b64(key)}}).encode())

    @staticmethod
    def _put_body(key: str, value: bytes) -> bytes:
        return json.dumps({"key": _b64(key), "value": _b64(value)}).encode()

    @staticmethod
    def value_of(body: bytes) -> bytes:
        return base64.b64decode(json.loads(body)["kvs"][0]["value"])


Dialect = RegistryKV | EtcdKV


def make_value(seed: int) -> bytes:
    """A printable 256-byte value (printable so the same bytes also fit a wrk Lua script)."""
    rng = random.Random(seed)
    return "".join(rng.choices(string.ascii_letters + string.digits, k=VALUE_SIZE)).encode()


def bench_key(i: int) -> str:
    return f"bench/kv/{i:04d}"


# ------------------------------------------------------------------------------------ throughput


@dataclass
class Rate:
    """Completed requests over a measured window, with per-request latencies."""

    ops: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds if self.seconds else float("nan")

    def detail(self) -> str:
        p50, p99 = (percentile(self.latencies, p) * 1000 for p in (50, 99))
        errors = f", {self.errors} errors" if self.errors else ""
        return f"{fmt_rate(self.per_second)} (p50 {fmt_ms(p50)}, p99 {fmt_ms(p99)}, {self.ops} ops{errors})"


async def _worker(session: aiohttp.ClientSession, requests: Sequence[Request], start: int, step: int,
                  deadline: float, rate: Rate) -> None:
    i = start
    while time.perf_counter() < deadline:
        req = requests[i % len(requests)]
        began = time.perf_counter()
        async with session.request(req.method, req.url, data=req.body) as resp:
            await resp.read()
            if resp.status != 200:
                rate.errors += 1
        rate.latencies.append(time.perf_counter() - began)
        rate.ops += 1
        i += step


async def _drive(session: aiohttp.ClientSession, requests: Sequence[Request], concurrency: int,
                 seconds: float) -> Rate:
    rate = Rate()
    began = time.perf_counter()
    deadline = began + seconds
    await asyncio.gather(*(_worker(session, requests, n, concurrency, deadline, rate)
                           for n in range(concurrency)))
    rate.seconds = time.perf_counter() - began
    return rate


async def measure_rate(requests: Sequence[Request], concurrency: int, seconds: float) -> Rate:
    """Closed-loop throughput: `concurrency` clients, each with one request in flight, for `seconds`."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        await _drive(session, requests, concurrency, min(0.5, seconds / 5))  # open connections, warm up
        return await _drive(session, requests, concurrency, seconds)


async def check_round_trip(kv: Dialect) -> None:
    """One PUT then GET through the same client, so a broken server cannot produce a fast figure."""
    value = make_value(7)
    async with aiohttp.ClientSession() as session:
        for req in (kv.put("bench/check", value), kv.get("bench/check")):
            async with session.request(req.method, req.url, data=req.body) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{kv.name}: {req.method} {req.url} -> {resp.status} {body[:200]!r}")
    if kv.value_of(body) != value:
        raise RuntimeError(f"{kv.name}: GET returned a different value than was PUT")


# ------------------------------------------------------------------------------------ raw connections


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    first_byte_at: float


class RawConnection(asyncio.Protocol):
    """A hand-driven keep-alive HTTP/1.1 connection: the cheapest client there is, and it notes when
    the first byte of each response arrived, so a wake-up is timed at the socket, not after parsing.
    It also counts markers in a streamed body (etcd's watch stream) with their arrival times."""

    def __init__(self, markers: Sequence[bytes] = ()):
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.first_byte_at: float | None = None
        self.pending: asyncio.Future | None = None
        self.markers = {marker: [] for marker in markers}
        self._scan_from = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending is not None and not self.pending.done():
            self.pending.set_exception(ConnectionError(f"connection closed: {exc}"))

    def send(self, request: bytes) -> asyncio.Future:
        """Write now; the future resolves with the complete response (Content-Length or chunked)."""
        self.buffer.clear()
        self.first_byte_at = None
        self.pending = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.pending

    def stream(self, request: bytes) -> None:
        """Write a request whose response never ends (a watch); only markers are looked at."""
        self.buffer.clear()
        self._scan_from = 0
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.first_byte_at is None:
            self.first_byte_at = now
        self.buffer += data
        if self.markers:
            self._count_markers(now)
        elif self.pending is not None and not self.pending.done():
            response = self._complete_response()
            if response is not None:
                self.pending.set_result(response)

    def _count_markers(self, now: float) -> None:
        longest = max(len(marker) for marker in self.markers)
        for marker, seen in self.markers.items():
            at = self.buffer.find(marker, self._scan_from)
            while at >= 0:
                seen.append(now)
                at = self.buffer.find(marker, at + len(marker))
        self._scan_from = max(0, len(self.buffer) - longest + 1)
        if len(self.buffer) > 1 << 20:  # a long watch: keep only the tail a marker could straddle
            del self.buffer[: self._scan_from]
            self._scan_from = 0

    def _complete_response(self) -> Response | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        body = bytes(self.buffer[end + 4:])
        if headers.get("transfer-encoding", "").lower() == "chunked":
            if not body.endswith(b"0\r\n\r\n"):
                return None
        elif len(body) < int(headers.get("content-length", "0")):
            return None
        return Response(int(lines[0].split()[1]), headers, body, self.first_byte_at or time.perf_counter())


async def connect(port: int, count: int, markers: Sequence[bytes] = ()) -> list[RawConnection]:
    """`count` raw connections, opened 100 at a time (a listen backlog is finite)."""
    loop = asyncio.get_running_loop()
    conns: list[RawConnection] = []
    while len(conns) < count:
        batch = min(100, count - len(conns))
        made = await asyncio.gather(*(loop.create_connection(lambda: RawConnection(markers), LOOPBACK, port)
                                      for _ in range(batch)))
        conns.extend(protocol for _, protocol in made)
    return conns


def close_all(conns: Sequence[RawConnection]) -> None:
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll on the event loop; the timestamps were taken in data_received, so polling adds no latency."""
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.002)


# ------------------------------------------------------------------------------------ wake-up: registry


@dataclass
class Wake:
    """Wake-up latencies: one list of per-watcher seconds per round (one round per PUT)."""

    rounds: list[list[float]] = field(default_factory=list)
    early: int = 0  # watchers that answered before the PUT was sent (not parked yet)
    acks: list[float] = field(default_factory=list)  # PUT sent -> its own response (the durable write)

    @property
    def flat(self) -> list[float]:
        return [x for r in self.rounds for x in r]

    def per_round(self, pct: float) -> list[float]:
        return [percentile(r, pct) for r in self.rounds]


async def _index_of(conn: RawConnection, kv: RegistryKV, key: str) -> int:
    resp = await conn.send(_raw("GET", f"/v1/kv/{key}"))
    return int(resp.headers["x-consul-index"])


def settle_time(watchers: int) -> float:
    """How long parked reads are given to reach the server before the PUT. etcd's rounds pause as long
    too: after an idle gap the first request is slower on this VM (~1 ms more), so both sides get it."""
    return 0.01 if watchers == 1 else 0.5 + watchers * 0.001


async def registry_wake_one(kv: RegistryKV, seconds: float) -> Wake:
    """One watcher: park a blocking GET at the key's index, PUT the key, time the watcher's answer."""
    key, value = "bench/watch/one", make_value(1)
    watcher, writer = await connect(kv.port, 2)
    wake = Wake()
    try:
        await writer.send(kv.raw_put(key, value))
        index = await _index_of(watcher, kv, key)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline and len(wake.rounds) < 500:
            parked = watcher.send(kv.raw_watch(key, index))
            await asyncio.sleep(settle_time(1))
            if parked.done():
                wake.early += 1
                index = int((await parked).headers["x-consul-index"])
                continue
            sent_at = time.perf_counter()
            written = writer.send(kv.raw_put(key, value))
            resp = await asyncio.wait_for(parked, 10)
            wake.rounds.append([resp.first_byte_at - sent_at])
            index = int(resp.headers["x-consul-index"])
            wake.acks.append((await asyncio.wait_for(written, 10)).first_byte_at - sent_at)
    finally:
        close_all([watcher, writer])
    return wake


async def registry_wake_many(kv: RegistryKV, watchers: int, rounds: int) -> Wake:
    """`watchers` blocking GETs parked on one key, woken by one PUT, `rounds` times."""
    key, value = "bench/watch/many", make_value(2)
    conns = await connect(kv.port, watchers)
    (writer,) = await connect(kv.port, 1)
    wake = Wake()
    try:
        await writer.send(kv.raw_put(key, value))
        index = await _index_of(writer, kv, key)
        for _ in range(rounds):
            parked = [conn.send(kv.raw_watch(key, index)) for conn in conns]
            await asyncio.sleep(settle_time(watchers))  # let the agent read and park every request
            wake.early += sum(1 for f in parked if f.done())
            sent_at = time.perf_counter()
            written = writer.send(kv.raw_put(key, value))
            responses = await asyncio.wait_for(asyncio.gather(*parked), 60)
            wake.rounds.append([r.first_byte_at - sent_at for r in responses])
            index = max(int(r.headers["x-consul-index"]) for r in responses)
            wake.acks.append((await asyncio.wait_for(written, 10)).first_byte_at - sent_at)
    finally:
        close_all([*conns, writer])
    return wake


# ------------------------------------------------------------------------------------ wake-up: etcd

CREATED, EVENTS = b'"created":true', b'"events"'


async def etcd_wake(kv: EtcdKV, watchers: int, rounds: int, seconds: float) -> Wake:
    """`watchers` watch streams on one key through the JSON gateway; each PUT is timed to every event."""
    key, value = f"bench/watch/{watchers}", make_value(3)
    conns = await connect(kv.port, watchers, markers=(CREATED, EVENTS))
    (writer,) = await connect(kv.port, 1)
    wake = Wake()
    try:
        for conn in conns:
            conn.stream(kv.raw_watch(key))
        await until(lambda: all(c.markers[CREATED] for c in conns), 60, "etcd watch streams to be created")
        deadline = time.perf_counter() + seconds
        while len(wake.rounds) < rounds and time.perf_counter() < deadline:
            seen = len(wake.rounds)
            await asyncio.sleep(settle_time(watchers))  # the same idle gap as the registry's rounds
            sent_at = time.perf_counter()
            written = writer.send(kv.raw_put(key, value))
            await until(lambda n=seen: all(len(c.markers[EVENTS]) > n for c in conns), 60,
                        "etcd watch events")
            wake.rounds.append([c.markers[EVENTS][seen] - sent_at for c in conns])
            wake.acks.append((await asyncio.wait_for(written, 10)).first_byte_at - sent_at)
    finally:
        close_all([*conns, writer])
    return wake


# ------------------------------------------------------------------------------------ etcd process


@contextlib.contextmanager
def running_etcd(workdir: Path) -> Iterator[EtcdKV]:
    """Single-node etcd on 127.0.0.1 with a fresh data dir, as in the reference note §5.2; stopped on exit."""
    client, peer = free_port(), free_port()
    client_url, peer_url = f"http://{LOOPBACK}:{client}", f"http://{LOOPBACK}:{peer}"
    argv = [tool_path("etcd") or "etcd", "--name", "bench", "--data-dir", str(workdir / "etcd-data"),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"bench={peer_url}", "--logger", "zap", "--log-level", "error"]
    process = Process("etcd", argv, workdir).start()
    try:
        def healthy() -> bool:
            process.check_alive()
            return json.loads(http_get(client_url + "/health")).get("health") == "true"
        wait_until(healthy, 30, "etcd to report healthy")
        yield EtcdKV(client)
    finally:
        process.stop()


def etcd_fsync_ms(kv: EtcdKV) -> float:
    """Mean WAL fsync time from etcd's own metrics: what one durable write costs its disk."""
    text = http_get(kv.base + "/metrics", timeout=5).decode()
    total = re.search(r"^etcd_disk_wal_fsync_duration_seconds_sum (\S+)", text, re.M)
    count = re.search(r"^etcd_disk_wal_fsync_duration_seconds_count (\S+)", text, re.M)
    if not total or not count or float(count.group(1)) == 0:
        return float("nan")
    return float(total.group(1)) / float(count.group(1)) * 1000


# ------------------------------------------------------------------------------------ wrk (second view)


def _lua_string(data: bytes) -> str:
    return json.dumps(data.decode())  # printable ASCII: a JSON string literal is a valid Lua literal


def wrk_script(workdir: Path, name: str, req: Request) -> Path:
    path = workdir / f"{name}.lua"
    lines = [f'wrk.method = "{req.method}"']
    if req.body is not None:
        lines += [f"wrk.body = {_lua_string(req.body)}",
                  'wrk.headers["Content-Type"] = "application/octet-stream"']
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(script: Path, url: str, connections: int, seconds: float) -> tuple[float, float, float, int]:
    """(req/s, p50 ms, p99 ms, non-2xx) from `wrk --latency`; NaNs when wrk fails."""
    threads = min(2, connections)
    argv = [tool_path("wrk") or "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--latency", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)

    def latency(pct: str) -> float:
        found = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(found.group(1)) * _UNITS[found.group(2)] if found else float("nan")

    return (float(rate.group(1)) if rate else float("nan"), latency("50"), latency("99"),
            int(bad.group(1)) if bad else 0)


# ------------------------------------------------------------------------------------ the run


@dataclass
class Figures:
    """Everything one side measured, keyed like FALLBACK: ("put", 1), ("wake1", 99) ..."""

    rates: dict[tuple[str, int], Rate] = field(default_factory=dict)
    wrk: dict[tuple[str, int], tuple[float, float, float, int]] = field(default_factory=dict)
    wake_one: Wake | None = None
    wake_many: Wake | None = None


async def populate(kv: Dialect, value: bytes, concurrency: int = 32) -> None:
    """Write every benchmark key once, so the GET phase never reads a missing key."""
    async def writer(session: aiohttp.ClientSession, start: int) -> None:
        for i in range(start, KEY_COUNT, concurrency):
            req = kv.put(bench_key(i), value)
            async with session.request(req.method, req.url, data=req.body) as resp:
                await resp.read()
                resp.raise_for_status()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(writer(session, n) for n in range(concurrency)))


async def measure_throughput(sides: Sequence[tuple[Dialect, Figures]], seconds: float) -> None:
    value = make_value(0)
    for op in ("put", "get"):
        if op == "get":
            for kv, _ in sides:
                await populate(kv, value)
        for concurrency in CONCURRENCY:
            for kv, figures in sides:
                requests = [kv.put(bench_key(i), value) if op == "put" else kv.get(bench_key(i))
                            for i in range(KEY_COUNT)]
                rate = await measure_rate(requests, concurrency, seconds)
                figures.rates[(op, concurrency)] = rate
                print(f"  {kv.name:8} {op} x{concurrency:<2}  {rate.detail()}", flush=True)


def measure_wrk(workdir: Path, sides: Sequence[tuple[Dialect, Figures]], seconds: float) -> None:
    value = make_value(0)
    for kv, figures in sides:
        for op in ("put", "get"):
            req = kv.put(bench_key(0), value) if op == "put" else kv.get(bench_key(0))
            script = wrk_script(workdir, f"{kv.name}-{op}", req)
            for concurrency in CONCURRENCY:
                result = figures.wrk[(op, concurrency)] = run_wrk(script, req.url, concurrency, seconds)
                bad = f", {result[3]} non-2xx" if result[3] else ""
                print(f"  {kv.name:8} wrk {op} c{concurrency:<2} {fmt_rate(result[0])} "
                      f"(p50 {fmt_ms(result[1])}, p99 {fmt_ms(result[2])}{bad})", flush=True)


def _wake_line(name: str, label: str, wake: Wake) -> str:
    flat = [x * 1000 for x in wake.flat]
    last = [max(r) * 1000 for r in wake.rounds]
    early = f", {wake.early} answered before the PUT" if wake.early else ""
    early += f"; PUT acknowledged p50 {fmt_ms(percentile(wake.acks, 50) * 1000)}" if wake.acks else ""
    worst = max(last, default=float("nan"))
    return (f"  {name:8} {label}: p50 {fmt_ms(percentile(flat, 50))}, p99 {fmt_ms(percentile(flat, 99))}, "
            f"last-of-round median {fmt_ms(percentile(last, 50))} / worst {fmt_ms(worst)}"
            f" over {len(wake.rounds)} rounds{early}")


async def measure_wakeups(ours: RegistryKV, etcd: EtcdKV | None, figures: dict[str, Figures],
                          seconds: float) -> None:
    figures["ours"].wake_one = await registry_wake_one(ours, seconds)
    print(_wake_line("registry", "wake 1 watcher", figures["ours"].wake_one), flush=True)
    if etcd is not None:
        figures["etcd"].wake_one = await etcd_wake(etcd, 1, 500, seconds)
        print(_wake_line("etcd", "wake 1 watcher", figures["etcd"].wake_one), flush=True)
    figures["ours"].wake_many = await registry_wake_many(ours, WATCHERS, FANOUT_ROUNDS)
    print(_wake_line("registry", f"wake {WATCHERS} watchers", figures["ours"].wake_many), flush=True)
    if etcd is not None:
        figures["etcd"].wake_many = await etcd_wake(etcd, WATCHERS, FANOUT_ROUNDS, 120)
        print(_wake_line("etcd", f"wake {WATCHERS} watchers", figures["etcd"].wake_many), flush=True)


# ------------------------------------------------------------------------------------ the table


def _ref(etcd: Figures | None, key: tuple[str, int], value: Callable[[Figures], float],
         view: str = "") -> tuple[float, str]:
    """etcd's figure from this run, or the reference note's when etcd could not run here."""
    if etcd is None:
        return FALLBACK[(f"{view}{key[0]}", key[1])]
    return value(etcd), ""


def throughput_rows(ours: Figures, etcd: Figures | None, via_wrk: bool) -> list[Row]:
    rows = []
    for op, share in (("put", 0.5), ("get", 1.0)):
        for concurrency in CONCURRENCY:
            key = (op, concurrency)
            if via_wrk:
                mine = ours.wrk[key][0]
                theirs, text = _ref(etcd, key, lambda f, k=key: f.wrk[k][0], "wrk ")
            else:
                mine = ours.rates[key].per_second
                theirs, text = _ref(etcd, key, lambda f, k=key: f.rates[k].per_second)
            goal = share * theirs
            what = "durable put" if op == "put" else "get"
            rows.append(Row(f"{what}, {concurrency} client{'s' if concurrency > 1 else ''}", fmt_rate(mine),
                            text or fmt_rate(theirs),
                            f">= {'50% of ' if op == 'put' else ''}etcd ({fmt_rate(goal)})",
                            None if goal != goal else mine >= goal))
    return rows


def wake_rows(ours: Figures, etcd: Figures | None) -> list[Row]:
    def ms(wake: Wake | None, fn: Callable[[Wake], float]) -> float:
        return fn(wake) * 1000 if wake and wake.rounds else float("nan")

    p = lambda pct: lambda w: percentile(w.flat, pct)  # noqa: E731
    last = lambda w: max(max(r) for r in w.rounds)  # noqa: E731
    ack = lambda pct: lambda w: percentile(w.acks, pct)  # noqa: E731
    specs = [("wake-up p50, 1 watcher", "wake_one", ("wake1", 50), p(50), None),
             ("wake-up p99, 1 watcher", "wake_one", ("wake1", 99), p(99), TARGET_WAKE_ONE_P99_MS),
             ("  of which the PUT's own ack, p99", "wake_one", ("ack1", 99), ack(99), None),
             (f"wake-up p99 over {WATCHERS} watchers", "wake_many", ("wakeN", 99), p(99), None),
             (f"wake-up of the last of {WATCHERS} (worst of {FANOUT_ROUNDS})", "wake_many", ("wakeN", 100),
              last, TARGET_WAKE_LAST_MS)]
    rows = []
    for label, attr, key, fn, target in specs:
        mine = ms(getattr(ours, attr), fn)
        theirs, text = _ref(etcd, key, lambda f, a=attr, g=fn: ms(getattr(f, a), g))
        rows.append(Row(label, fmt_ms(mine), text or fmt_ms(theirs),
                        f"<= {target:g} ms" if target else "-",
                        None if target is None or mine != mine else mine <= target))
    return rows


def report(ours: Figures, etcd: Figures | None, fsync: float, probes: tuple[str, str],
           seconds: float) -> None:
    ref_name = "etcd (this run)" if etcd is not None else f"etcd ({REFERENCE_NOTE})"
    client = "asyncio aiohttp client" + (", same code for both; " if etcd is not None else "; ")
    print_table(f"KV throughput ({client}{VALUE_SIZE} B values, {seconds:g} s each)",
                throughput_rows(ours, etcd, via_wrk=False), ref_name)
    if ours.wrk and (etcd is None or etcd.wrk):
        print_table("KV throughput, second view: wrk (C client, one key)",
                    throughput_rows(ours, etcd, via_wrk=True), ref_name)
    how = "etcd: /v3/watch gateway streams" if etcd is not None else "etcd: aetcd gRPC watch, §5.1"
    print_table("Blocking-query wake-up (PUT sent -> watcher's response at the socket; raw HTTP/1.1 client; "
                f"{how})", wake_rows(ours, etcd), ref_name)
    print(f"machine: before the run {probes[0]}; after it {probes[1]}")
    print("notes: etcd range reads are linearizable (its default); registry reads are served from memory"
          + (f"; etcd mean WAL fsync during the run {fsync:.2f} ms" if fsync == fsync else ""))


def machine_load() -> str:
    """How busy the shared box is: figures from a loaded machine must not be read as ours alone."""
    load = os.getloadavg()[0]
    return f"a busy loop got {cpu_probe():.2f} of a core, load average {load:.2f} on {os.cpu_count()} cores"


async def run_all(workdir: Path, seconds: float, use_etcd: bool, use_wrk: bool) -> None:
    before = machine_load()
    with contextlib.ExitStack() as stack:
        ours = stack.enter_context(running_agent(_mk(workdir / "registry")))
        registry = RegistryKV(ours.http_port)
        etcd = stack.enter_context(running_etcd(_mk(workdir / "etcd"))) if use_etcd else None
        figures = {"ours": Figures(), "etcd": Figures()}
        sides: list[tuple[Dialect, Figures]] = [(registry, figures["ours"])]
        if etcd is not None:
            sides.append((etcd, figures["etcd"]))
        for kv, _ in sides:
            await check_round_trip(kv)
        print("throughput (asyncio aiohttp client):", flush=True)
        await measure_throughput(sides, seconds)
        if use_wrk:
            print("throughput (wrk):", flush=True)
            measure_wrk(workdir, sides, seconds)
        print("blocking-query wake-up:", flush=True)
        await measure_wakeups(registry, etcd, figures, seconds)
        fsync = etcd_fsync_ms(etcd) if etcd is not None else float("nan")
    report(figures["ours"], figures["etcd"] if use_etcd else None, fsync, (before, machine_load()), seconds)


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------ profiling


async def _profile_phase(phase: str, kv: RegistryKV, seconds: float) -> None:
    value = make_value(0)
    if phase.startswith("put"):
        rate = await measure_rate([kv.put(bench_key(i), value) for i in range(KEY_COUNT)], 32, seconds)
        print(f"  put x32 under cProfile: {rate.detail()}")
    elif phase.startswith("get"):
        await populate(kv, value)
        rate = await measure_rate([kv.get(bench_key(i)) for i in range(KEY_COUNT)], 32, seconds)
        print(f"  get x32 under cProfile: {rate.detail()}")
    else:
        print(_wake_line("registry", f"wake {WATCHERS} under cProfile",
                         await registry_wake_many(kv, WATCHERS, FANOUT_ROUNDS)))


def profile(workdir: Path, seconds: float, phases: Sequence[str], top: int = 22) -> None:
    """Run the agent under cProfile for each phase and print where its event-loop thread spends time.

    The agent runs on plain asyncio here (see serve_agent_for_profile), so the event loop's own work
    shows up; cProfile sees only the event-loop thread (the SQLite writer thread is timed separately
    below) and multiplies the cost of Python code, so compare shares, not absolute rates.
    """
    import pstats

    for phase in phases:
        out = workdir / f"agent-{phase}.prof"
        launcher = ["-m", "cProfile", "-o", str(out), "-m", "bench.kv_bench", AGENT_FLAG]
        with running_agent(_mk(workdir / phase), python_args=launcher) as agent:
            asyncio.run(_profile_phase(phase, RegistryKV(agent.http_port), seconds))
        print(f"\n--- agent profile, phase {phase}: top {top} by own time ---")
        pstats.Stats(str(out)).sort_stats("tottime").print_stats(top)
    print(f"SQLite commit of one KV row (WAL, synchronous=FULL): p50 {sqlite_commit_ms(workdir):.2f} ms")


def sqlite_commit_ms(workdir: Path, count: int = 300) -> float:
    """The floor under one durable write from one client: one small SQLite transaction with fsync."""
    from registry.persistence import Batch, SQLitePersistence

    store = SQLitePersistence(_mk(workdir / "sqlite-floor"))
    times = []
    try:
        for i in range(count):
            batch = Batch()
            batch.put("kv", bench_key(i % KEY_COUNT), {"Key": bench_key(i), "Value": _b64(make_value(0))})
            began = time.perf_counter()
            store._write_group([batch])  # noqa: SLF001 - the writer thread's own step, timed alone
            times.append(time.perf_counter() - began)
    finally:
        store.close()
    return percentile(times, 50) * 1000


# ------------------------------------------------------------------------------------ entry


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.kv_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=SECONDS, help="length of each throughput window")
    parser.add_argument("--no-etcd", action="store_true", help="skip etcd; use the reference note's figures")
    parser.add_argument("--no-wrk", action="store_true", help="skip the wrk second view")
    parser.add_argument("--profile", nargs="*", metavar="PHASE", choices=("put", "get", "wake"),
                        help="profile the agent (phases put, get, wake; default all) instead of comparing")
    return parser.parse_args(argv)


def _loop_policy() -> None:
    """uvloop for the client when present (the agent uses it too): less client cost on both sides."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


AGENT_FLAG = "--serve-agent-for-profile"


def serve_agent_for_profile(argv: Sequence[str]) -> None:
    """The agent on asyncio's own loop (uvloop's C loop is invisible to cProfile); internal to --profile."""
    args = list(argv[2:] if list(argv[:2]) == ["-m", "registry"] else argv)
    sys.modules["uvloop"] = None  # type: ignore[assignment] - makes the agent's `import uvloop` fail
    from registry.agent import main as agent_main

    sys.exit(agent_main(args))


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [AGENT_FLAG]:
        serve_agent_for_profile(argv[1:])
    args = parse_args(argv)
    raise_fd_limit()
    _loop_policy()
    use_etcd = not args.no_etcd and tool_path("etcd") is not None
    use_wrk = not args.no_wrk and tool_path("wrk") is not None
    if not args.no_etcd and not use_etcd:
        print(f"etcd is not installed (apt-get install etcd-server): etcd figures come from {REFERENCE_NOTE}")
    if not args.no_wrk and not use_wrk:
        print("wrk is not installed (apt-get install wrk): skipping the wrk view")
    with scratch_dir("kv") as workdir:
        if args.profile is not None:
            profile(workdir, args.seconds, args.profile or ("put", "get", "wake"))
        else:
            asyncio.run(run_all(workdir, args.seconds, use_etcd, use_wrk))


if __name__ == "__main__":
    main()
