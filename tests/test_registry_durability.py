"""Durability: every acknowledged write survives kill -9; the index never goes backwards; -dev keeps nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import consul
import requests

from tests.procs import AgentProcess


def _writer(url: str, name: str, acked: list[str], stop: threading.Event) -> None:
    session = requests.Session()
    n = 0
    while not stop.is_set():
        key = f"durable/{name}/{n}"
        try:
            resp = session.put(f"{url}/v1/kv/{key}", data=f"value-{n}", timeout=5)
        except requests.RequestException:
            return  # the agent died mid-request: that write was never acknowledged
        if resp.status_code == 200 and resp.json() is True:
            acked.append(key)
        n += 1


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    agent = AgentProcess(data_dir=tmp_path / "data").start(tmp_path)
    try:
        c = consul.Consul(host="127.0.0.1", port=agent.http_port)
        c.agent.service.register("durable-svc", service_id="d1", port=80, tags=["t"])
        acked: dict[str, list[str]] = {f"w{i}": [] for i in range(4)}
        stop = threading.Event()
        threads = [threading.Thread(target=_writer, args=(agent.url, name, keys, stop)) for name, keys in acked.items()]
        for t in threads:
            t.start()
        time.sleep(1.5)
        index_before = int(requests.get(f"{agent.url}/v1/kv/?recurse").headers["X-Consul-Index"])
        agent.kill()
        stop.set()
        for t in threads:
            t.join()
        total = sum(len(v) for v in acked.values())
        assert total > 20, "the writers should have been acknowledged many times before the kill"

        agent.start(tmp_path)
        c = consul.Consul(host="127.0.0.1", port=agent.http_port)
        index_after, entries = c.kv.get("durable/", recurse=True)
        stored = {e["Key"]: e["Value"] for e in entries}
        missing = [k for keys in acked.values() for k in keys if k not in stored]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
        assert all(stored[k] == f"value-{k.rsplit('/', 1)[1]}".encode() for keys in acked.values() for k in keys)
        assert int(index_after) >= index_before
        assert c.agent.services()["d1"]["Tags"] == ["t"]
        # a new write after restart gets a higher index than anything before the crash
        c.kv.put("durable/after", "x")
        assert c.kv.get("durable/after")[1]["ModifyIndex"] > int(index_after)
    finally:
        agent.stop()


def test_graceful_restart_keeps_node_id_sessions_and_catalog(tmp_path: Path) -> None:
    agent = AgentProcess(data_dir=tmp_path / "data").start(tmp_path)
    try:
        c = consul.Consul(host="127.0.0.1", port=agent.http_port)
        node_id = c.agent.self()["Config"]["NodeID"]
        sid = c.session.create(name="kept", lock_delay=0)
        c.kv.put("locked", "v", acquire=sid)
        c.catalog.register("ext", "10.9.9.9", service={"Service": "ext-svc", "Port": 1})
        agent.restart()
        c = consul.Consul(host="127.0.0.1", port=agent.http_port)
        assert c.agent.self()["Config"]["NodeID"] == node_id
        assert c.session.info(sid)[1]["Name"] == "kept"
        assert c.kv.get("locked")[1]["Session"] == sid
        assert [e["Node"] for e in c.catalog.service("ext-svc")[1]] == ["ext"]
    finally:
        agent.stop()


def test_dev_mode_keeps_nothing(tmp_path: Path) -> None:
    agent = AgentProcess().start(tmp_path)
    try:
        consul.Consul(host="127.0.0.1", port=agent.http_port).kv.put("ephemeral", "x")
        agent.restart()
        assert consul.Consul(host="127.0.0.1", port=agent.http_port).kv.get("ephemeral")[1] is None
    finally:
        agent.stop()
