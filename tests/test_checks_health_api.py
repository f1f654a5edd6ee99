"""The /v1/health endpoints against a real agent: shapes, filters and blocking on check changes."""

from __future__ import annotations

import threading
import time

import requests

from tests.procs import AgentProcess


def _get(agent: AgentProcess, path: str, **params: str) -> requests.Response:
    return requests.get(agent.url + path, params=params, timeout=40)


def _put(agent: AgentProcess, path: str, body: dict | None = None) -> requests.Response:
    return requests.put(agent.url + path, json=body, timeout=5)


def test_health_endpoints(shared_agent: AgentProcess) -> None:
    agent = shared_agent
    for sid, tags, status in (("h1", ["Primary"], "passing"), ("h2", ["secondary"], "warning")):
        assert _put(agent, "/v1/agent/service/register", {"Name": "hsvc", "ID": sid, "Tags": tags, "Checks": [
            {"CheckID": f"{sid}-a", "TTL": "60s", "Status": status},
            {"CheckID": f"{sid}-b", "TTL": "60s", "Status": "passing"}]}).status_code == 200

    entries = _get(agent, "/v1/health/service/hsvc").json()
    assert [e["Service"]["ID"] for e in entries] == ["h1", "h2"]
    first = entries[0]
    assert set(first) == {"Node", "Service", "Checks"}
    assert [c["CheckID"] for c in first["Checks"]] == ["serfHealth", "h1-a", "h1-b"]  # node checks first
    assert first["Checks"][1]["ServiceTags"] == ["Primary"] and first["Checks"][1]["Type"] == "ttl"
    assert not any(k.startswith("_") for c in first["Checks"] for k in c)
    assert [e["Service"]["ID"] for e in _get(agent, "/v1/health/service/hsvc", passing="").json()] == ["h1"]
    assert [e["Service"]["ID"] for e in _get(agent, "/v1/health/service/hsvc", passing="false").json()] == [
        "h1", "h2"]
    tagged = _get(agent, "/v1/health/service/hsvc", tag="primary").json()  # tags match case-insensitively
    assert [e["Service"]["ID"] for e in tagged] == ["h1"]
    assert _get(agent, "/v1/health/service/nosuch").json() == []

    checks = _get(agent, "/v1/health/checks/hsvc").json()
    assert [c["CheckID"] for c in checks] == ["h1-a", "h1-b", "h2-a", "h2-b"]
    node = _get(agent, "/v1/health/node/node1").json()
    assert {"serfHealth", "h1-a", "h2-b"} <= {c["CheckID"] for c in node}
    assert _get(agent, "/v1/health/node/ghost").json() == []
    assert [c["CheckID"] for c in _get(agent, "/v1/health/state/warning").json()] == ["h2-a"]
    every = {c["CheckID"] for c in _get(agent, "/v1/health/state/any").json()}
    assert {"h1-a", "h2-a", "serfHealth"} <= every
    for path in ("/v1/health/service/hsvc", "/v1/health/checks/hsvc", "/v1/health/node/node1",
                 "/v1/health/state/any"):
        resp = _get(agent, path)
        assert int(resp.headers["X-Consul-Index"]) >= 1 and resp.headers["X-Consul-KnownLeader"] == "true"


def test_blocking_health_reads_wake_on_check_change(shared_agent: AgentProcess) -> None:
    agent = shared_agent
    _put(agent, "/v1/agent/service/register", {"Name": "bsvc", "Check": {"CheckID": "b-ttl", "TTL": "60s"}})
    paths = ["/v1/health/service/bsvc", "/v1/health/checks/bsvc", "/v1/health/node/node1",
             "/v1/health/state/passing"]
    results: dict[str, tuple[float, str]] = {}

    def park(path: str, index: str) -> None:
        resp = _get(agent, path, index=index, wait="30s")
        results[path] = (time.monotonic(), resp.headers["X-Consul-Index"])

    threads = []
    indexes = {}
    for path in paths:
        indexes[path] = _get(agent, path).headers["X-Consul-Index"]
        threads.append(threading.Thread(target=park, args=(path, indexes[path]), daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # let them park; returning early would still be correct, just not blocking
    sent = time.monotonic()
    assert _put(agent, "/v1/agent/check/pass/b-ttl").status_code == 200
    for thread in threads:
        thread.join(10)
    assert set(results) == set(paths)
    for path, (at, index) in results.items():
        assert int(index) > int(indexes[path]), path
        assert at - sent < 5.0, path  # woken by the change, not by the 30 s wait
    print("\nwake-up after a check change: " + ", ".join(
        f"{p.split('/v1/health/')[1]} {(at - sent) * 1000:.1f} ms" for p, (at, _) in results.items()))
