"""Health check runners: HTTP, TCP, TTL and script checks for this agent's own checks.

One asyncio task per interval check, each with its own timeout, so a hung backend costs that check
one timeout and nothing else: the loop never waits on a probe (HTTP through one shared aiohttp
session, TCP through asyncio streams, scripts through asyncio subprocesses). TTL checks are loop
timers (no task at all), accurate to the loop's clock (~1 ms with uvloop).

HTTP connections are pooled (keep-alive), unlike Consul's one-connection-per-probe: 1,000 probes/s
against one backend would otherwise pile up sockets in TIME_WAIT (26k seen in a 10 s bench run)
towards loopback's ephemeral-port limit, and cost 1.5x the CPU (0.41 vs 0.27 cores measured). A
backend that dies closes its pooled connections with it, so the next probe still sees it down (a
stale one is retried once, fresh).

What runs is decided by the store, not by the HTTP handlers: a commit listener looks at the check
rows each transaction wrote and (re)starts or stops the runner of every local check whose private
`_spec` changed. That one path covers agent registrations, config-file services, deregistrations and
the restart of persisted checks when the agent starts again.

Results go through Consul's thresholds (SuccessBeforePassing, FailuresBeforeWarning/-Critical) and
are written only when status or output changed, so a steady fleet of checks writes nothing.

The reaper deregisters a service whose check carrying DeregisterCriticalServiceAfter has been
critical that long. Consul runs it every 30 s and raises the timeout to at least 1 min; both are
knobs here (config keys `check_reap_interval` / `check_deregister_interval_min`, or the environment
variables EDGESTACK_CHECK_REAP_INTERVAL / EDGESTACK_CHECK_DEREGISTER_INTERVAL_MIN, Go durations or
seconds), which the tests use to reap within a second or two.

`GET /debug/checks` reports how many checks run and how late they start against their schedule
(p50/p99/max lag over the last runs, plus the longest GC pause): the figures bench/checks_bench.py
reads; `DELETE /debug/checks` starts a new window. Full garbage collections were the one source of
long stalls (0.2-0.6 s with 1,000 checks on a loaded box), hence the HeapFreezer below.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import logging
import math
import os
import random
import signal
import time
from typing import Any

import aiohttp
from aiohttp import web

from registry.durations import DurationError, parse_duration
from registry.store import Store, Txn

log = logging.getLogger("registry.checks")

INTERVAL_KINDS = ("http", "tcp", "script")
REAP_INTERVAL_DEFAULT = 30.0
DEREGISTER_MIN_DEFAULT = 60.0
LAG_WINDOW = 20000  # recent runs kept for the lag percentiles
USER_AGENT = "Consul Health Check"
OUTPUT_MAX = 4096  # Consul's default cap (checkdefs stores each check's own, never more)


# ---------------------------------------------------------------------------- thresholds


class StatusGate:
    """Consul's SuccessBeforePassing / FailuresBeforeWarning / FailuresBeforeCritical.

    A result that has not yet reached its threshold leaves status *and* output as they are, so a
    flapping backend does not rewrite the catalog on every probe.
    """

    def __init__(self, spec: dict[str, Any]):
        self.success_needed = int(spec.get("success_before_passing") or 0)
        self.critical_after = int(spec.get("failures_before_critical") or 0)
        self.warning_after = int(spec.get("failures_before_warning") or self.critical_after)
        self.successes = 0
        self.failures = 0

    def admit(self, status: str, output: str) -> tuple[str, str] | None:
        """The (status, output) to record, or None while a threshold holds the current one."""
        if status in ("passing", "warning"):
            self.successes += 1
            self.failures = 0
            return (status, output) if self.successes >= self.success_needed else None
        self.failures += 1
        self.successes = 0
        if self.failures >= self.critical_after:
            return status, output
        if self.failures >= self.warning_after:
            return "warning", output
        return None


# ---------------------------------------------------------------------------- probes


def _cap(data: bytes, limit: int) -> str:
    return data[:limit].decode("utf-8", errors="replace")


async def probe_http(session: aiohttp.ClientSession, spec: dict[str, Any]) -> tuple[str, str]:
    """2xx passing, 429 warning, anything else (or no answer within the timeout) critical."""
    method = (spec.get("method") or "GET").upper()
    url = spec["http"]
    headers = [("User-Agent", USER_AGENT), ("Accept", "text/plain, text/*, */*")]
    for name, values in (spec.get("header") or {}).items():
        for value in values if isinstance(values, list) else [values]:
            headers.append((name, str(value)))
    limit = spec.get("output_max_size") or OUTPUT_MAX
    timeout = aiohttp.ClientTimeout(total=spec.get("timeout") or 10.0)
    for attempt in (1, 2):
        try:
            async with session.request(method, url, headers=headers, data=spec.get("body") or None,
                                       ssl=not spec.get("tls_skip_verify"),
                                       timeout=timeout, allow_redirects=True) as resp:
                body = await _read_capped(resp.content, limit)
                text = f"HTTP {method} {url}: {resp.status} {resp.reason or ''} Output: {_cap(body, limit)}"
                return _http_status(resp.status), text[:limit]
        except aiohttp.ServerDisconnectedError:
            if attempt == 1:
                continue  # a pooled keep-alive connection the backend had just closed: retry once, fresh
            return "critical", f'{method.title()} "{url}": server closed the connection'
        except TimeoutError:
            return "critical", f'{method.title()} "{url}": timed out after {spec.get("timeout") or 10.0:g}s'
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return "critical", f'{method.title()} "{url}": {_reason(exc)}'[:limit]
    return "critical", f'{method.title()} "{url}": no response'


def _http_status(code: int) -> str:
    if 200 <= code < 300:
        return "passing"
    return "warning" if code == 429 else "critical"


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror.lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address}: missing port in address")
    return host.strip("[]"), int(port)


async def probe_tcp(spec: dict[str, Any]) -> tuple[str, str]:
    """Passing when a TCP connection opens within the timeout."""
    address = spec["tcp"]
    timeout = spec.get("timeout") or 10.0
    try:
        host, port = split_host_port(address)
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return "critical", f"dial tcp {address}: i/o timeout"
    except (OSError, ValueError) as exc:
        return "critical", f"dial tcp {address}: connect: {_reason(exc)}"
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return "passing", f"TCP connect {address}: Success"


async def probe_script(spec: dict[str, Any]) -> tuple[str, str]:
    """Exit 0 passing, 1 warning, anything else critical; the output is stdout+stderr (the tail)."""
    limit = spec.get("output_max_size") or OUTPUT_MAX
    timeout = spec.get("timeout") or 30.0
    argv = list(spec.get("args") or []) or ["/bin/sh", "-c", spec.get("script") or ""]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return "critical", f"Failed to start {argv[0]}: {_reason(exc)}"
    tail = bytearray()
    try:
        await asyncio.wait_for(_drain(proc, tail, limit), timeout)
        code = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        _kill_group(proc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
        return "critical", f"Timed out ({timeout:g}s) running check"
    finally:
        _kill_group(proc)
    output = _cap(bytes(tail), limit)
    return ("passing" if code == 0 else "warning" if code == 1 else "critical"), output


async def _drain(proc: asyncio.subprocess.Process, tail: bytearray, limit: int) -> None:
    """Read all output, keeping the last `limit` bytes (what Consul's ring buffer keeps)."""
    assert proc.stdout is not None
    while chunk := await proc.stdout.read(65536):
        tail.extend(chunk)
        if len(tail) > limit:
            del tail[:len(tail) - limit]


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """A script that timed out (or an agent stopping) takes its children with it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- runners


class GCPauses:
    """Longest garbage-collector pause since the last reset: a stalled loop makes every check late."""

    def __init__(self) -> None:
        self.started = 0.0
        self.longest = 0.0
        self.collections = 0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        elif self.started:
            self.longest = max(self.longest, time.perf_counter() - self.started)
            self.collections += info.get("generation") == 2

    def reset(self) -> None:
        self.longest = 0.0
        self.collections = 0


class HeapFreezer:
    """Keeps long-lived objects (catalog records, runners, connections) out of full collections.

    A full collection walks every tracked object: with 1,000 checks that is ~70k objects and a
    pause of 60-100 ms (measured up to 0.5 s on a loaded 2-core box), during which every check due
    is late. Once the set of checks has settled, unfreeze + collect + gc.freeze() moves the
    survivors to the permanent generation, making later full pauses ~4x shorter. Doing it again
    after each change and every `refresh` seconds lets cycles among objects that died meanwhile
    be reclaimed; plain garbage goes by reference counting either way.
    """

    def __init__(self, settle: float = 5.0, refresh: float = 600.0):
        self.settle = settle
        self.refresh = refresh
        self.handle: asyncio.TimerHandle | None = None

    def changed(self) -> None:
        self._schedule(self.settle)

    def _schedule(self, delay: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.handle = asyncio.get_running_loop().call_later(delay, self.refreeze)

    def refreeze(self) -> None:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._schedule(self.refresh)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        gc.unfreeze()


class LagStats:
    """How late interval checks start against their schedule (seconds), over the recent runs."""

    def __init__(self, window: int = LAG_WINDOW):
        self.recent: collections.deque[float] = collections.deque(maxlen=window)
        self.runs = 0

    def record(self, lag: float) -> None:
        self.recent.append(max(lag, 0.0))
        self.runs += 1

    def percentile(self, pct: float) -> float:
        if not self.recent:
            return 0.0
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))]

    def reset(self) -> None:
        self.recent.clear()


class IntervalRunner:
    """One HTTP/TCP/script check: first run within [0, interval), then on a fixed-rate schedule."""

    def __init__(self, owner: CheckRunners, check_id: str, spec: dict[str, Any]):
        self.owner = owner
        self.check_id = check_id
        self.spec = spec
        self.gate = StatusGate(spec)
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop(), name=f"check:{self.check_id}")

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.spec["interval"]
        due = loop.time() + random.uniform(0, interval)
        while True:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.owner.lag.record(loop.time() - due)
            await self._run_once()
            due += interval
            behind = loop.time() - due
            if behind > 0:  # the probe itself overran its slot: skip the missed runs, they are not lag
                due += math.ceil(behind / interval) * interval

    async def _run_once(self) -> None:
        try:
            status, output = await self._probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a probe bug marks the check, never kills the runner
            log.exception("check %s: probe failed", self.check_id)
            status, output = "critical", f"check failed: {type(exc).__name__}: {exc}"
        admitted = self.gate.admit(status, output)
        if admitted is not None:
            await self.owner.report(self, *admitted)

    async def _probe(self) -> tuple[str, str]:
        kind = self.spec["kind"]
        if kind == "http":
            return await probe_http(self.owner.http_session(), self.spec)
        if kind == "tcp":
            return await probe_tcp(self.spec)
        return await probe_script(self.spec)


class TTLRunner:
    """A TTL check: a loop timer re-armed by every pass/warn/fail/update; expiry means critical."""

    def __init__(self, owner: CheckRunners, check_id: str, spec: dict[str, Any]):
        self.owner = owner
        self.check_id = check_id
        self.spec = spec
        self.timer: asyncio.TimerHandle | None = None
        self.generation = 0

    def start(self) -> None:
        self.touch()

    def touch(self) -> None:
        """Restart the TTL clock; a pending expiry from the previous clock is void."""
        self.generation += 1
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_at(loop.time() + self.spec["ttl"], self._expired, self.generation)

    def stop(self) -> None:
        self.generation += 1
        if self.timer is not None:
            self.timer.cancel()

    def _expired(self, generation: int) -> None:
        self.timer = None
        self.owner.spawn(self._write_expiry(generation))

    async def _write_expiry(self, generation: int) -> None:
        if generation != self.generation:
            return  # touched between the timer firing and this task running
        check = self.owner.local_check(self.check_id)
        if check is None:
            return
        last = check.get("Output") or ""
        output = f"TTL expired (last output before timeout follows): {last}" if last else "TTL expired"
        log.warning("check %s missed its TTL, is now critical", self.check_id)
        await self.owner.report(self, "critical", output[:self.spec.get("output_max_size") or OUTPUT_MAX])


Runner = IntervalRunner | TTLRunner


# ---------------------------------------------------------------------------- the agent's runners


def _knob(raw: dict[str, Any], key: str, env: str, default: float) -> float:
    """A duration from the environment (tests) or the agent config, else Consul's default."""
    value = os.environ.get(env) or raw.get(key)
    if value in (None, ""):
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        return parse_duration(value)
    except DurationError:
        log.warning("ignoring %s=%r: not a duration", env, value)
        return default


class CheckRunners:
    """Every runner of this agent's checks, kept in step with the store by a commit listener."""

    def __init__(self, store: Store, enable_script_checks: bool, raw_config: dict[str, Any] | None = None):
        raw = raw_config or {}
        self.store = store
        self.node = store.node_name
        self.enable_script_checks = enable_script_checks
        self.reap_interval = _knob(raw, "check_reap_interval", "EDGESTACK_CHECK_REAP_INTERVAL",
                                   REAP_INTERVAL_DEFAULT)
        self.deregister_min = _knob(raw, "check_deregister_interval_min",
                                    "EDGESTACK_CHECK_DEREGISTER_INTERVAL_MIN", DEREGISTER_MIN_DEFAULT)
        self.runners: dict[str, Runner] = {}
        self.critical_since: dict[str, float] = {}
        self.lag = LagStats()
        self.gc = GCPauses()
        self.freezer = HeapFreezer()
        self._session: aiohttp.ClientSession | None = None
        self._reaper: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Run every persisted agent check again (a restart) and follow the store from now on."""
        for cid in list(self.store.node_checks.get(self.node, {})):
            self._reconcile(cid)
        self.store.commit_listeners.append(self._on_commit)
        gc.callbacks.append(self.gc)
        self.freezer.changed()
        self._reaper = asyncio.get_running_loop().create_task(self._reap_loop(), name="check-reaper")

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.store.commit_listeners.remove(self._on_commit)
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self.gc)
        self.freezer.stop()
        tasks = [r.task for r in self.runners.values() if isinstance(r, IntervalRunner) and r.task]
        for runner in self.runners.values():
            runner.stop()
        self.runners.clear()
        if self._reaper is not None:
            self._reaper.cancel()
            tasks.append(self._reaper)
        tasks.extend(self._background)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def spawn(self, coro: Any) -> None:
        """A short task the loop must not lose (asyncio keeps only weak references to tasks)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def http_session(self) -> aiohttp.ClientSession:
        """One pooled session for all HTTP checks: no connection limit, so a hung backend blocks nobody."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=10)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  auto_decompress=True)
        return self._session

    # -------------------------------------------------------------- following the store

    def local_check(self, check_id: str) -> dict | None:
        return self.store.node_checks.get(self.node, {}).get(check_id)

    def _on_commit(self, txn: Txn) -> None:
        if "checks" not in txn.topics:
            return
        seen: set[str] = set()
        for table, key, _ in txn.batch.rows:
            if table != "checks":
                continue
            node, cid = json.loads(key)
            if node == self.node and cid not in seen:
                seen.add(cid)
                self._reconcile(cid)

    def _reconcile(self, cid: str) -> None:
        """Make the runner of one check match its stored spec (start, restart, stop or leave alone)."""
        check = self.local_check(cid)
        self._track_critical(cid, check)
        spec = (check or {}).get("_spec")
        runner = self.runners.get(cid)
        if runner is not None and spec == runner.spec:
            return
        if runner is not None:
            runner.stop()
            del self.runners[cid]
            self.freezer.changed()
        if not spec or spec.get("kind") not in (*INTERVAL_KINDS, "ttl"):
            return
        if spec["kind"] == "script" and not self.enable_script_checks:
            log.warning("check %s is a script check but script checks are disabled: not running it", cid)
            return
        new: Runner = TTLRunner(self, cid, spec) if spec["kind"] == "ttl" else IntervalRunner(self, cid, spec)
        self.runners[cid] = new
        new.start()
        self.freezer.changed()

    def _track_critical(self, cid: str, check: dict | None) -> None:
        if check is None or check["Status"] != "critical":
            self.critical_since.pop(cid, None)
        else:
            self.critical_since.setdefault(cid, time.monotonic())

    def ttl_touched(self, check_id: str) -> None:
        """A TTL update arrived over HTTP: restart that check's clock (called before the write)."""
        runner = self.runners.get(check_id)
        if isinstance(runner, TTLRunner):
            runner.touch()

    async def report(self, runner: Runner, status: str, output: str) -> None:
        """Write a result, unless the runner was replaced meanwhile or nothing changed."""
        if self.runners.get(runner.check_id) is not runner:
            return
        check = self.local_check(runner.check_id)
        if check is None or (check["Status"] == status and check["Output"] == output):
            return
        if check["Status"] != status:
            log.info("check %s is now %s", runner.check_id, status)
        await self.store.update_check(self.node, runner.check_id, status, output)

    # -------------------------------------------------------------- reaping

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                await self.reap()
            except Exception:  # noqa: BLE001 - the reaper must outlive any one bad record
                log.exception("reaping critical services failed")

    async def reap(self) -> list[str]:
        """Deregister services whose DeregisterCriticalServiceAfter check has been critical too long."""
        now = time.monotonic()
        reaped = []
        for cid, since in list(self.critical_since.items()):
            check = self.local_check(cid)
            after = ((check or {}).get("_spec") or {}).get("deregister_after") or 0
            if not check or after <= 0 or not check["ServiceID"]:
                continue
            if now - since >= max(after, self.deregister_min) and check["ServiceID"] not in reaped:
                sid = check["ServiceID"]
                log.info("check %s has been critical for too long; deregistering service %s", cid, sid)
                await self.store.deregister_service(sid)
                reaped.append(sid)
        return reaped

    # -------------------------------------------------------------- figures

    def stats(self) -> dict[str, Any]:
        kinds = collections.Counter(r.spec["kind"] for r in self.runners.values())
        return {"checks": len(self.runners), "kinds": dict(kinds), "runs": self.lag.runs,
                "window": len(self.lag.recent),
                "lag_p50_ms": round(self.lag.percentile(50) * 1000, 3),
                "lag_p99_ms": round(self.lag.percentile(99) * 1000, 3),
                "lag_max_ms": round(self.lag.percentile(100) * 1000, 3),
                "gc_full_collections": self.gc.collections,
                "gc_longest_pause_ms": round(self.gc.longest * 1000, 3)}


async def _stats_endpoint(request: web.Request) -> web.Response:
    runners: CheckRunners = request.app["checks"]
    if request.method == "DELETE":
        runners.lag.reset()
        runners.gc.reset()
    return web.json_response(runners.stats())


async def start_checks(agent: Any, app: web.Application) -> CheckRunners:
    """Called by the agent at start: run the checks, expose the runner to the HTTP handlers."""
    runners = CheckRunners(agent.store, agent.config.enable_script_checks, agent.config.raw)
    app["checks"] = runners
    app.router.add_route("GET", "/debug/checks", _stats_endpoint)
    app.router.add_route("DELETE", "/debug/checks", _stats_endpoint)
    await runners.start()
    log.info("check runners started: %d checks (reaper every %gs, deregister minimum %gs)",
             len(runners.runners), runners.reap_interval, runners.deregister_min)
    return runners
