"""Deregister-critical reaping, maintenance mode, thresholds and runners surviving a restart.

Reaping uses the documented knobs (EDGESTACK_CHECK_REAP_INTERVAL, EDGESTACK_CHECK_DEREGISTER_INTERVAL_MIN)
so a service is reaped within seconds instead of Consul's 30 s period and 1 min minimum.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from registry.checks import CheckRunners
from registry.persistence import MemoryPersistence
from registry.store import Store
from tests.procs import AgentProcess, wait_until
from tests.test_checks_support import (
    HTTPBackend,
    check_record,
    check_status,
    passing_ids,
    register,
    wait_status,
)


@pytest.fixture(scope="module")
def reaping_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("reap")
    proc = AgentProcess(env={"EDGESTACK_CHECK_REAP_INTERVAL": "200ms",
                             "EDGESTACK_CHECK_DEREGISTER_INTERVAL_MIN": "0"}).start(tmp)
    yield proc
    proc.stop()


def _services(agent: AgentProcess) -> dict:
    return requests.get(agent.url + "/v1/agent/services", timeout=5).json()


def _put(agent: AgentProcess, path: str, **params: str) -> requests.Response:
    return requests.put(agent.url + path, params=params, timeout=5)


def test_deregister_critical_service_after(reaping_agent: AgentProcess) -> None:
    agent = reaping_agent
    register(agent, {"Name": "doomed", "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "1s"}})
    register(agent, {"Name": "kept", "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "1s",
                                               "Status": "passing"}})
    assert check_record(agent, "service:doomed")["Definition"]["DeregisterCriticalServiceAfter"] == "1s"
    wait_until(lambda: "doomed" not in _services(agent), 10, message="critical service reaped")
    assert "service:doomed" not in requests.get(agent.url + "/v1/agent/checks", timeout=5).json()
    assert "kept" in _services(agent)  # passing: never reaped
    _put(agent, "/v1/agent/check/fail/service:kept")
    wait_until(lambda: "kept" not in _services(agent), 10, message="service reaped after turning critical")


def test_reaper_honours_consul_minimum() -> None:
    """Without the knob, a 1s DeregisterCriticalServiceAfter is raised to Consul's 1 minute."""

    async def scenario() -> tuple[list[str], list[str]]:
        store = Store(MemoryPersistence(), "n1")
        await store.catalog_register({"Node": "n1", "Address": "127.0.0.1"}, None, [])
        spec = {"kind": "ttl", "ttl": 30.0, "deregister_after": 1.0}
        service = {"ID": "s", "Service": "s", "Tags": [], "Address": "", "Meta": {}, "Port": 0,
                   "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False}
        check = {"Node": "n1", "CheckID": "c", "Name": "c", "Status": "critical", "Notes": "", "Output": "",
                 "ServiceID": "s", "ServiceName": "s", "ServiceTags": [], "Type": "ttl", "_spec": spec}
        await store.register_service(service, [check], False)
        strict = CheckRunners(store, False, {"check_reap_interval": "1h"})
        relaxed = CheckRunners(store, False, {"check_reap_interval": "1h",
                                              "check_deregister_interval_min": "0s"})
        for runners in (strict, relaxed):
            await runners.start()
            runners.critical_since["c"] -= 2.0  # critical for 2 s already
        first = await strict.reap()
        second = await relaxed.reap()
        for runners in (strict, relaxed):
            await runners.stop()
        return first, second

    assert asyncio.run(scenario()) == ([], ["s"])


def test_service_and_node_maintenance(shared_agent: AgentProcess) -> None:
    agent = shared_agent
    register(agent, {"Name": "maint", "Check": {"TTL": "60s", "Status": "passing"}})
    wait_until(lambda: passing_ids(agent, "maint") == ["maint"], 5, message="passing")
    resp = _put(agent, "/v1/agent/service/maintenance/maint", enable="true", reason="deploy")
    assert resp.status_code == 200
    assert passing_ids(agent, "maint") == []
    record = check_record(agent, "_service_maintenance:maint")
    assert (record["Status"], record["Notes"], record["ServiceID"]) == ("critical", "deploy", "maint")
    _put(agent, "/v1/agent/service/maintenance/maint", enable="true", reason="second")
    assert check_record(agent, "_service_maintenance:maint")["Notes"] == "deploy"  # Consul keeps the first
    assert _put(agent, "/v1/agent/service/maintenance/maint", enable="false").status_code == 200
    assert passing_ids(agent, "maint") == ["maint"]

    assert _put(agent, "/v1/agent/maintenance", enable="true").status_code == 200
    assert passing_ids(agent, "maint") == [] and passing_ids(agent, "consul") == []
    entry = requests.get(agent.url + "/v1/health/service/maint", timeout=5).json()[0]
    node_check = next(c for c in entry["Checks"] if c["CheckID"] == "_node_maintenance")
    assert node_check["Notes"].startswith("Maintenance mode is enabled for this node")
    critical = requests.get(agent.url + "/v1/health/state/critical", timeout=5).json()
    assert "_node_maintenance" in [c["CheckID"] for c in critical]
    assert _put(agent, "/v1/agent/maintenance", enable="false").status_code == 200
    assert passing_ids(agent, "maint") == ["maint"]
    assert check_status(agent, "_node_maintenance") is None


def test_success_before_passing(shared_agent: AgentProcess) -> None:
    web = HTTPBackend().start()
    try:
        register(shared_agent, {"Name": "gated", "Check": {"HTTP": web.url, "Interval": "1s",
                                                           "SuccessBeforePassing": 3}})
        wait_status(shared_agent, "service:gated", "passing", timeout=15)
        assert web.requests >= 3
    finally:
        web.stop()


def test_runners_restart_with_the_agent(tmp_path: Path) -> None:
    web = HTTPBackend().start()
    agent = AgentProcess(data_dir=tmp_path / "data").start(tmp_path)
    try:
        register(agent, {"Name": "durable", "Checks": [
            {"HTTP": web.url, "Interval": "1s", "Timeout": "1s"},
            {"CheckID": "durable-ttl", "TTL": "1s", "Status": "passing"}]})
        wait_status(agent, "service:durable:1", "passing")
        agent.stop()
        web.stop()
        agent.start(tmp_path)
        wait_status(agent, "service:durable:1", "critical")  # the HTTP runner runs again...
        wait_status(agent, "durable-ttl", "critical")  # ...and so does the TTL clock
        web.start()
        wait_status(agent, "service:durable:1", "passing")
    finally:
        agent.stop()
        web.stop()
