"""TTL checks, script checks and the wake-up of parked health reads, end to end.

TTL: pass/warn/fail/update set status and output and restart the clock; silence turns the check
critical with Consul's "TTL expired" output. Scripts: exit 0/1/other = passing/warning/critical,
only on an agent started with -enable-script-checks (Consul's 500 and text otherwise). A parked
`?index` read on /v1/health/service returns as soon as a check's status changes (measured).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.procs import AgentProcess, wait_until
from tests.test_checks_support import check_record, check_status, register, wait_status

SCRIPTS_DISABLED_REMOTE = ("Scripts are disabled on this agent from remote calls; to enable, configure "
                           "'enable_script_checks' to true")  # Consul's agent.go, word for word


@pytest.fixture(scope="module")
def script_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("scripts")
    proc = AgentProcess(extra_args=["-enable-script-checks"]).start(tmp)
    yield proc
    proc.stop()


def _put(agent: AgentProcess, path: str, **kwargs) -> requests.Response:
    return requests.put(agent.url + path, timeout=5, **kwargs)


def test_ttl_endpoints_and_expiry(script_agent: AgentProcess) -> None:
    agent = script_agent
    # a long TTL while the endpoints are exercised (a loaded box must not expire it meanwhile)...
    resp = register(agent, {"Name": "beat", "Check": {"CheckID": "beat-ttl", "TTL": "60s"}})
    assert resp.status_code == 200
    assert check_status(agent, "beat-ttl") == "critical"  # Consul's default initial status
    assert _put(agent, "/v1/agent/check/pass/beat-ttl", params={"note": "all good"}).status_code == 200
    assert check_record(agent, "beat-ttl")["Output"] == "all good"
    assert _put(agent, "/v1/agent/check/warn/beat-ttl", params={"note": "slow"}).status_code == 200
    assert check_status(agent, "beat-ttl") == "warning"
    assert _put(agent, "/v1/agent/check/fail/beat-ttl").status_code == 200
    assert check_status(agent, "beat-ttl") == "critical"
    resp = _put(agent, "/v1/agent/check/update/beat-ttl", json={"Status": "passing", "Output": "fine"})
    assert resp.status_code == 200
    record = check_record(agent, "beat-ttl")
    assert (record["Status"], record["Output"], record["Type"]) == ("passing", "fine", "ttl")
    # ...and a short one for the expiry
    register(agent, {"Name": "short", "Check": {"CheckID": "short-ttl", "TTL": "1s"}})
    _put(agent, "/v1/agent/check/update/short-ttl", json={"Status": "passing", "Output": "fine"})
    wait_status(agent, "short-ttl", "critical", timeout=10)
    expired = check_record(agent, "short-ttl")["Output"]
    assert expired == "TTL expired (last output before timeout follows): fine"
    assert check_status(agent, "beat-ttl") == "passing"
    # a TTL update on a check without a TTL is Consul's 500
    register(agent, {"Name": "nottl", "Check": {"TCP": "127.0.0.1:1", "Interval": "10s"}})
    resp = _put(agent, "/v1/agent/check/pass/service:nottl")
    assert (resp.status_code, resp.text) == (500, 'CheckID "service:nottl" does not have associated TTL')


def _parked_read(agent: AgentProcess, path: str, index: str, out: dict) -> None:
    resp = requests.get(agent.url + path, params={"index": index, "wait": "30s"}, timeout=40)
    out["at"] = time.monotonic()
    out["index"] = resp.headers["X-Consul-Index"]
    out["body"] = resp.json()


def _park(agent: AgentProcess, path: str) -> tuple[threading.Thread, dict]:
    index = requests.get(agent.url + path, timeout=5).headers["X-Consul-Index"]
    out: dict = {}
    thread = threading.Thread(target=_parked_read, args=(agent, path, index, out), daemon=True)
    thread.start()
    time.sleep(0.3)  # let the read park (not an assertion: an early return would still be correct)
    return thread, out


def test_parked_health_read_wakes_on_status_change(script_agent: AgentProcess) -> None:
    agent = script_agent
    register(agent, {"Name": "wake", "Check": {"CheckID": "wake-ttl", "TTL": "2500ms"}})
    path = "/v1/health/service/wake"
    # 1. a status change made over HTTP
    thread, out = _park(agent, path)
    sent = time.monotonic()
    _put(agent, "/v1/agent/check/pass/wake-ttl")
    thread.join(10)
    assert out["body"][0]["Checks"][-1]["Status"] == "passing"
    http_wake = out["at"] - sent
    # 2. a status change made by the agent itself (TTL expiry: due 2.5s after the pass)
    thread, out = _park(agent, path)
    thread.join(15)
    assert out["body"][0]["Checks"][-1]["Status"] == "critical"
    expiry_wake = out["at"] - sent - 2.5
    print(f"\nparked health read woken {http_wake * 1000:.1f} ms after a TTL pass was sent; "
          f"{expiry_wake * 1000:.1f} ms after the TTL was due (target: within 50 ms)")
    assert http_wake < 1.0 and expiry_wake < 1.0


def test_script_exit_codes(script_agent: AgentProcess, tmp_path: Path) -> None:
    agent = script_agent
    code_file = tmp_path / "code"
    code_file.write_text("0")
    script = f'c=$(cat {code_file}); echo "exit $c"; exit $c'
    assert register(agent, {"Name": "job", "Check": {"Args": ["/bin/sh", "-c", script],
                                                     "Interval": "1s"}}).status_code == 200
    for code, status in (("0", "passing"), ("1", "warning"), ("2", "critical"), ("0", "passing")):
        code_file.write_text(code)
        wait_status(agent, "service:job", status)
        wait_until(lambda c=code: check_record(agent, "service:job")["Output"] == f"exit {c}\n", 5,
                   message=f"output of exit {code}")
    assert check_record(agent, "service:job")["Type"] == "script"


def test_legacy_script_and_script_timeout(script_agent: AgentProcess) -> None:
    agent = script_agent
    register(agent, {"Name": "legacy", "Check": {"Script": "echo legacy; exit 1", "Interval": "1s"}})
    register(agent, {"Name": "slow", "Check": {"Args": ["sleep", "30"], "Interval": "1s", "Timeout": "1s",
                                               "Status": "passing"}})
    wait_status(agent, "service:legacy", "warning")
    assert check_record(agent, "service:legacy")["Output"] == "legacy\n"
    wait_status(agent, "service:slow", "critical")
    assert check_record(agent, "service:slow")["Output"] == "Timed out (1s) running check"


def test_script_checks_refused_when_disabled(shared_agent: AgentProcess) -> None:
    resp = register(shared_agent, {"Name": "evil", "Check": {"Args": ["/bin/true"], "Interval": "10s"}})
    assert (resp.status_code, resp.text) == (500, SCRIPTS_DISABLED_REMOTE)
    resp = _put(shared_agent, "/v1/agent/check/register",
                json={"Name": "evil", "Script": "/bin/true", "Interval": "10s"})
    assert (resp.status_code, resp.text) == (500, SCRIPTS_DISABLED_REMOTE)
    assert "evil" not in requests.get(shared_agent.url + "/v1/agent/services", timeout=5).json()
    assert "evil" not in requests.get(shared_agent.url + "/v1/agent/checks", timeout=5).json()


@pytest.mark.parametrize(("check", "status", "text"), [
    ({"HTTP": "http://127.0.0.1:1/"}, 400,
     "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"),
    ({"TTL": "10s", "Interval": "10s"}, 400, "Invalid check: Interval and TTL cannot both be specified"),
    ({"Notes": "no type"}, 400, "Invalid check: TTL must be > 0 for TTL checks"),
    ({"TTL": "10s", "Status": "sideways"}, 400, "Bad check status"),
])
def test_invalid_check_definitions(shared_agent: AgentProcess, check: dict, status: int, text: str) -> None:
    resp = _put(shared_agent, "/v1/agent/check/register", json={"Name": "bad", **check})
    assert (resp.status_code, resp.text) == (status, text)


def test_py_consul_check_helpers(script_agent: AgentProcess) -> None:
    """py-consul's Check.* payloads (lower-case keys, nanosecond intervals) register and run."""
    import consul

    from tests.test_checks_support import HTTPBackend, TCPBackend

    web, tcp = HTTPBackend().start(), TCPBackend().start()
    c = consul.Consul(host="127.0.0.1", port=script_agent.http_port)
    try:
        assert c.agent.check.register("ttl_check", consul.Check.ttl("30s"), notes="foo")
        assert c.agent.checks()["ttl_check"]["Notes"] == "foo"
        assert c.agent.check.ttl_warn("ttl_check", notes="hmm")
        assert c.agent.checks()["ttl_check"]["Status"] == "warning"
        assert c.agent.check.ttl_pass("ttl_check", notes="ok")
        assert c.agent.checks()["ttl_check"]["Output"] == "ok"
        assert c.agent.check.register("fast_ttl", consul.Check.ttl("100ms"))
        assert c.agent.check.ttl_pass("fast_ttl")
        wait_status(script_agent, "fast_ttl", "critical")
        assert c.agent.check.register("script_check", consul.Check.script(["/bin/true"], 10), check_id="sc")
        assert c.agent.check.register("http_check", consul.Check.http(web.url, "10ms", timeout="2s",
                                                                      header={"x-foo": ["bar"]}))
        assert c.agent.check.register("tcp_check", consul.Check.tcp("127.0.0.1", tcp.port, "1s"))
        for cid in ("sc", "http_check", "tcp_check"):
            wait_status(script_agent, cid, "passing")
        assert c.agent.checks()["http_check"]["Interval"] == "1s"  # 10ms raised to Consul's 1s minimum
        assert c.agent.service.register("pc", service_id="pc1", check=consul.Check.ttl("10s"))
        assert c.agent.check.ttl_pass("service:pc1")
        _, nodes = c.health.service("pc", passing=True)
        assert nodes == []  # the critical node-level TTL checks above fail every service on the node
        for cid in ("ttl_check", "fast_ttl", "sc", "http_check", "tcp_check"):
            assert c.agent.check.deregister(cid)
        assert not set(c.agent.checks()) & {"ttl_check", "fast_ttl", "sc", "http_check", "tcp_check"}
        _, nodes = c.health.service("pc", passing=True)
        assert [n["Service"]["ID"] for n in nodes] == ["pc1"]
    finally:
        web.stop()
        tcp.stop()
