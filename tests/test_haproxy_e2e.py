"""End to end (issue 6): a real agent, the templater as a process supervising a real HAProxy 2.8,
real HTTP backends, continuous HTTP load while a service scales and flaps (one agent shared by the module).

After every event HAProxy's live server set (`show servers state`, servers taking traffic) must equal
the registry's passing set, and no request may fail except 503 while no instance is passing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from templater.haproxy.mastercli import MasterCLI
from templater.haproxy.runtime import RuntimeAPI
from tests.procs import ROOT, AgentProcess, wait_until
from tests.test_haproxy_support import Backend, EdgeTemplater, LoadLoop, short_dir

POOL = 8

# (registered instances web-0..web-(n-1), indices whose check is critical): 22 events after the
# initial single instance; scale 1 → 5 → 1 → 8 → 0 (all critical) → 3 → … with health flaps.
EVENTS: list[tuple[int, set[int]]] = [
    (5, set()), (5, {2}), (1, set()), (8, set()), (8, {5}), (8, {5, 6}), (8, {6}), (8, set(range(8))),
    (3, set()), (3, {1}), (6, {1}), (6, set()), (2, set()), (7, set()), (7, {0, 3}), (4, {0}), (4, set()),
    (1, set()), (8, set()), (8, {7}), (5, set()), (2, set()),
]


class WebService:
    """A service in the agent (one name per test, so tests can share an agent): instances <name>-<i> on
    backend i, routed by Host `<name>.local`, TTL checks driven by the test."""

    def __init__(self, agent: AgentProcess, backends: list[Backend], name: str):
        self.agent = agent
        self.backends = backends
        self.name = name
        self.host = f"{name}.local"
        self.registered: set[int] = set()
        self.critical: set[int] = set()

    def _put(self, path: str, body: dict | None = None) -> None:
        reply = requests.put(f"{self.agent.url}/v1/{path}", json=body, timeout=5)
        assert reply.status_code == 200, (path, reply.status_code, reply.text)

    def set(self, count: int, critical: set[int]) -> None:
        """Register/deregister and pass/fail checks so that web-0..web-(count-1) exist and `critical` fail."""
        wanted = set(range(count))
        for i in sorted(wanted - self.registered):
            self._put("agent/service/register", {
                "Name": self.name, "ID": f"{self.name}-{i}", "Address": "127.0.0.1", "Port": self.backends[i].port,
                "Meta": {"edge-host": self.host}, "Check": {"TTL": "3600s", "Status": "passing"}})
        for i in sorted(self.registered - wanted):
            self._put(f"agent/service/deregister/{self.name}-{i}")
        self.registered = wanted
        self.critical &= wanted
        for i in sorted(wanted):
            should_fail = i in critical
            if should_fail != (i in self.critical):
                self._put(f"agent/check/{'fail' if should_fail else 'pass'}/service:{self.name}-{i}")
        self.critical = critical & wanted

    def passing_ports(self) -> set[int]:
        return {self.backends[i].port for i in self.registered - self.critical}


def live_ports(edge: EdgeTemplater, web: WebService) -> set[int]:
    """Ports of the service's servers HAProxy sends traffic to right now."""
    return {s.port for s in RuntimeAPI(str(edge.admin_socket)).servers_state(web.name) if s.serving}


def resolver_counters(edge: EdgeTemplater) -> dict[str, int]:
    """`show resolvers registry` from the current worker, as {counter: value}."""
    text = MasterCLI(str(edge.master_socket)).command("@1 show resolvers registry")
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {name.strip(): int(value) for name, value in pairs if value.strip().isdigit()}


def reloads(edge: EdgeTemplater) -> int:
    return MasterCLI(str(edge.master_socket)).show_proc().reloads


@pytest.fixture
def run_dir() -> Iterator[Path]:
    yield from short_dir()


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = [Backend(f"web-{i}") for i in range(POOL)]
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture
def edges() -> Iterator[list[EdgeTemplater]]:
    """Templaters started by a test; each is stopped, and any HAProxy left behind is stopped too."""
    started: list[EdgeTemplater] = []
    yield started
    for edge in started:
        edge.stop()
        edge.kill_haproxy()


def start_serving(edges: list[EdgeTemplater], edge: EdgeTemplater, web: WebService,
                  what: str = "first render live") -> EdgeTemplater:
    """Start `edge` (the `edges` fixture stops it) and wait until HAProxy serves web's passing instances."""
    edges.append(edge)
    edge.start()
    wait_until(lambda: live_ports(edge, web) == web.passing_ports(), 20, message=what)
    return edge


def run_scale_events(edge: EdgeTemplater, web: WebService, events: list[tuple[int, set[int]]],
                     settle: float = 20.0) -> LoadLoop:
    """Drive the events under load; after each, HAProxy's live set must equal the passing set."""
    loop = LoadLoop(edge.url + "/", host=web.host).start()
    windows: list[tuple[float, float]] = []
    started: list[tuple[float, tuple[int, set[int]]]] = []
    empty_since: float | None = None
    try:
        loop.advance(20)
        for count, critical in events:
            before = time.monotonic()
            started.append((before, (count, critical)))
            web.set(count, critical)
            expected = web.passing_ports()
            if not expected and empty_since is None:
                empty_since = before
            wait_until(lambda expected=expected: live_ports(edge, web) == expected, settle,
                       message=f"HAProxy live set == passing set after event {(count, sorted(critical))}")
            if expected and empty_since is not None:
                windows.append((empty_since, time.monotonic()))
                empty_since = None
            loop.advance(10)
    finally:
        loop.stop()
    if empty_since is not None:
        windows.append((empty_since, time.monotonic()))
    unexpected = [(round(t - started[0][0], 3), what, max((e for e in started if e[0] <= t),
                                                           default=(0, None), key=lambda e: e[0])[1])
                  for t, what in loop.unexpected(windows)]
    assert not unexpected, f"{len(unexpected)} failed requests outside no-instance windows " \
                           f"(seconds into the run, answer, last event): {unexpected[:5]}"
    return loop


def test_runtime_mode_scales_with_zero_reloads_under_load(shared_agent: AgentProcess, run_dir: Path,
                                                          backends: list[Backend], edges: list[EdgeTemplater]):
    web = WebService(shared_agent, backends, "rt")
    web.set(1, set())
    edge = start_serving(edges, EdgeTemplater(run_dir, shared_agent.http_addr, mode="runtime"), web)
    loop = run_scale_events(edge, web, EVENTS)
    assert len(EVENTS) >= 20
    assert reloads(edge) == 0, edge.log()[-3000:]
    assert edge.metric("reloads_total") == 0
    assert edge.metric("runtime_updates_total") >= len(EVENTS)
    assert loop.statuses.get(200, 0) > 100
    assert loop.bodies >= {b.label for b in backends}


def test_reload_mode_one_reload_per_coalesced_event(shared_agent: AgentProcess, run_dir: Path,
                                                    backends: list[Backend], edges: list[EdgeTemplater]):
    web = WebService(shared_agent, backends, "rl")
    web.set(1, set())
    edge = start_serving(edges, EdgeTemplater(run_dir, shared_agent.http_addr, mode="reload", wait="300ms:3s"), web)
    events = [(5, set()), (5, {1}), (1, set()), (8, set()), (3, {2}), (4, set())]
    run_scale_events(edge, web, events)
    # every event changed the passing set; its several registry writes coalesced into one reload
    assert reloads(edge) == len(events), edge.log()[-3000:]
    assert edge.metric("reloads_total") == len(events)
    assert edge.metric("runtime_updates_total") == 0


def test_fragments_restart_and_reattach(shared_agent: AgentProcess, run_dir: Path, backends: list[Backend],
                                        edges: list[EdgeTemplater]):
    web = WebService(shared_agent, backends, "frag")
    web.set(2, set())
    edge = start_serving(edges, EdgeTemplater(run_dir, shared_agent.http_addr, mode="runtime"), web)

    def get() -> requests.Response:
        return requests.get(edge.url + "/", headers={"Host": web.host}, timeout=5)

    # a valid KV fragment: exactly one reload, and HAProxy applies it
    kv = f"{shared_agent.url}/v1/kv/haproxy/backends/{web.name}"
    assert requests.put(kv, data="http-response set-header X-Fragment yes", timeout=5).json() is True
    wait_until(lambda: get().headers.get("X-Fragment") == "yes", 20, message="fragment live")
    assert reloads(edge) == 1 and edge.metric("reloads_total") == 1

    # an invalid fragment: the check fails, the file and HAProxy keep the last good config
    good = edge.config.read_text()
    assert requests.put(kv, data="bogus_directive on", timeout=5).json() is True
    wait_until(lambda: edge.metric("check_failures_total") >= 1, 20, message="check failure counted")
    assert "bogus_directive" in edge.log() and "[ALERT]" in edge.log()
    assert edge.config.read_text() == good
    assert get().status_code == 200 and reloads(edge) == 1
    # ... and the bad fragment does not freeze scaling: servers still follow, through the Runtime API
    web.set(3, set())
    wait_until(lambda: live_ports(edge, web) == web.passing_ports(), 20, message="scaled despite the bad fragment")
    assert reloads(edge) == 1 and "bogus_directive" not in edge.config.read_text()
    web.set(2, set())
    wait_until(lambda: live_ports(edge, web) == web.passing_ports(), 20, message="scaled back")
    requests.delete(kv, timeout=5)                       # the agent is shared with other tests
    wait_until(lambda: "X-Fragment" not in get().headers, 20, message="fragment removed")
    wait_until(lambda: reloads(edge) == 2, 10, message="second reload done")

    # HAProxy killed: restarted by the templater with the last good config
    master = MasterCLI(str(edge.master_socket))
    old_pid = master.show_proc().master.pid
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: edge.metric("haproxy_restarts_total") == 1, 20, message="HAProxy restarted")
    wait_until(lambda: get().status_code == 200, 20, message="serving after restart")
    assert master.show_proc().master.pid != old_pid

    # templater killed and started again: it attaches to the running HAProxy, no reload
    pid = master.show_proc().master.pid
    edge.stop(signal.SIGKILL)
    assert get().status_code == 200                     # HAProxy outlives a crashed templater
    again = EdgeTemplater(run_dir, shared_agent.http_addr, mode="runtime")
    again.http_port, again.stats_port = edge.http_port, edge.stats_port
    again.env.update({"EDGESTACK_HTTP_PORT": str(edge.http_port), "EDGESTACK_STATS_PORT": str(edge.stats_port)})
    edges.append(again)
    again.start()
    wait_until(lambda: again.metric("renders_total") >= 1, 20, message="templater rendered")
    assert master.show_proc().master.pid == pid
    assert reloads(again) == 0 and again.metric("reloads_total") == 0
    assert live_ports(again, web) == web.passing_ports()
    web.set(3, set())                                    # and it keeps managing servers at runtime
    wait_until(lambda: live_ports(again, web) == web.passing_ports(), 20, message="scale after re-attach")
    assert reloads(again) == 0


def test_dns_mode_haproxy_resolves_srv_from_the_agent(shared_agent: AgentProcess, run_dir: Path,
                                                      backends: list[Backend], edges: list[EdgeTemplater]):
    extra = [Backend(f"web-{i}") for i in range(POOL, POOL + 4)]
    try:
        web = WebService(shared_agent, backends + extra, "dnsweb")
        web.set(1, set())
        edge = EdgeTemplater(run_dir, shared_agent.http_addr, mode="dns", template="haproxy-dns.cfg.j2",
                             dns_addr=f"127.0.0.1:{shared_agent.dns_port}")
        start_serving(edges, edge, web, "first SRV answer live")
        events = [(5, set()), (5, {2}), (1, set()), (8, set()), (8, set(range(8))), (3, set()), (3, {1}),
                  (6, set()), (2, set())]
        run_scale_events(edge, web, events)
        assert reloads(edge) == 0                    # servers come from DNS: no reload, no runtime command
        assert edge.metric("runtime_updates_total") == 0
        counters = resolver_counters(edge)
        assert counters["valid"] > len(events) and counters["invalid"] == counters["too_big"] == 0, counters
        assert counters["truncated"] == 0, counters
        # outgrowing the 10 slots is the one structural change: one reload (slots kept through the
        # server-state file), then 20 slots
        run_scale_events(edge, web, [(12, set())])
        assert reloads(edge) == 1
        assert f"server-template {web.name} 20 " in edge.config.read_text()
    finally:
        for backend in extra:
            backend.stop()


def test_sighup_with_new_haproxy_settings_and_once_keep_haproxy_serving(
        shared_agent: AgentProcess, run_dir: Path, backends: list[Backend], edges: list[EdgeTemplater]):
    """Neither a SIGHUP that changes the `haproxy {}` block nor a `-once` run on the same config may stop
    the HAProxy that is serving: the new controller attaches to the running master."""
    web = WebService(shared_agent, backends, "hup")
    web.set(2, set())
    edge = start_serving(edges, EdgeTemplater(run_dir, shared_agent.http_addr, mode="runtime"), web)
    master = MasterCLI(str(edge.master_socket))
    pid = master.show_proc().master.pid
    load = LoadLoop(edge.url + "/", web.host).start()
    load.advance()
    hcl = run_dir / "templater.hcl"
    hcl.write_text(hcl.read_text().replace("drain_timeout = 2", "drain_timeout = 3"))
    edge.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloading configuration" in edge.log(), 10, message="SIGHUP handled")
    web.set(3, set())  # the new controller still applies changes, through the runtime API
    wait_until(lambda: live_ports(edge, web) == web.passing_ports(), 20, message="scaled after SIGHUP")
    load.advance()

    once = subprocess.run([sys.executable, "-m", "templater", "-config", str(hcl), "-once"], cwd=ROOT,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("CONSUL_HTTP")},
                               **edge.env},
                          capture_output=True, text=True, timeout=60)
    assert once.returncode == 0, once.stderr[-2000:]
    load.advance()
    load.stop()
    assert load.failures() == {}, load.failures()
    assert master.show_proc().master.pid == pid and reloads(edge) == 0
