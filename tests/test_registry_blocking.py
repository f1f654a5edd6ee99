"""Blocking queries: parked reads wake for what they read, and only for that."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.procs import AgentProcess


def _index(resp: requests.Response) -> int:
    return int(resp.headers["X-Consul-Index"])


def _park(url: str, index: int, wait: str = "5s") -> tuple[requests.Response, float]:
    start = time.monotonic()
    resp = requests.get(url, params={"index": index, "wait": wait}, timeout=30)
    return resp, time.monotonic() - start


def _later(delay: float, fn, *args) -> threading.Timer:
    timer = threading.Timer(delay, fn, args)
    timer.start()
    return timer


def test_read_metadata_headers_on_every_read(shared_agent: AgentProcess) -> None:
    url = shared_agent.url
    for path in ("/v1/catalog/services", "/v1/catalog/nodes", "/v1/health/service/consul", "/v1/kv/none",
                 "/v1/kv/?recurse", "/v1/session/list", "/v1/health/state/any", "/v1/catalog/node/node1"):
        resp = requests.get(url + path)
        assert _index(resp) >= 1, path
        assert resp.headers["X-Consul-KnownLeader"] == "true", path
        assert resp.headers["X-Consul-LastContact"] == "0", path


def test_kv_read_wakes_on_write_of_its_key(shared_agent: AgentProcess) -> None:
    url = f"{shared_agent.url}/v1/kv/b/wake"
    requests.put(url, data="1")
    index = _index(requests.get(url))
    _later(0.3, requests.put, url, "2")
    resp, took = _park(url, index, "20s")
    assert _index(resp) > index
    assert resp.json()[0]["Value"] == "Mg=="
    assert took < 10


def test_kv_read_does_not_wake_for_other_keys(shared_agent: AgentProcess) -> None:
    url = f"{shared_agent.url}/v1/kv/b/quiet"
    requests.put(url, data="1")
    index = _index(requests.get(url))
    _later(0.1, requests.put, f"{shared_agent.url}/v1/kv/b/quiet-neighbour", "x")
    _later(0.2, requests.put, f"{shared_agent.url}/v1/kv/b/quie", "x")
    resp, took = _park(url, index, "1500ms")
    assert _index(resp) == index, "woken by a write to another key"
    assert took >= 1.4


def test_missing_key_read_blocks_until_it_appears(shared_agent: AgentProcess) -> None:
    url = f"{shared_agent.url}/v1/kv/b/appears"
    first = requests.get(url)
    assert first.status_code == 404
    _later(0.3, requests.put, url, "here")
    resp, _ = _park(url, _index(first), "20s")
    assert resp.status_code == 200 and resp.json()[0]["Key"] == "b/appears"


def test_prefix_read_wakes_on_delete_under_prefix(shared_agent: AgentProcess) -> None:
    base = f"{shared_agent.url}/v1/kv/b/prefix/"
    requests.put(base + "x", data="1")
    requests.put(base + "y", data="1")
    index = _index(requests.get(base, params={"recurse": ""}))
    _later(0.3, requests.delete, base + "x")
    resp = requests.get(base, params={"recurse": "", "index": index, "wait": "20s"})
    assert _index(resp) > index
    assert [e["Key"] for e in resp.json()] == ["b/prefix/y"]


def test_health_read_wakes_on_service_change_not_on_others(shared_agent: AgentProcess) -> None:
    url = shared_agent.url
    requests.put(f"{url}/v1/agent/service/register", json={"Name": "bq-web", "ID": "bq-web-1", "Port": 1})
    health = f"{url}/v1/health/service/bq-web"
    index = _index(requests.get(health))
    _later(0.1, requests.put, f"{url}/v1/agent/service/register", None)  # noise: bad body, no write
    _later(0.2, lambda: requests.put(f"{url}/v1/agent/service/register", json={"Name": "bq-other"}))
    resp, took = _park(health, index, "1s")
    assert _index(resp) == index and took >= 0.9
    _later(0.3, lambda: requests.put(f"{url}/v1/agent/service/register",
                                     json={"Name": "bq-web", "ID": "bq-web-2", "Port": 2}))
    resp, _ = _park(health, index, "20s")
    assert [e["Service"]["ID"] for e in resp.json()] == ["bq-web-1", "bq-web-2"]


def test_catalog_services_wakes_on_new_service(shared_agent: AgentProcess) -> None:
    url = shared_agent.url
    index = _index(requests.get(f"{url}/v1/catalog/services"))
    _later(0.3, lambda: requests.put(f"{url}/v1/agent/service/register", json={"Name": "bq-new"}))
    resp, _ = _park(f"{url}/v1/catalog/services", index, "20s")
    assert "bq-new" in resp.json()


def test_wait_times_out_with_same_index(shared_agent: AgentProcess) -> None:
    url = f"{shared_agent.url}/v1/catalog/nodes"
    index = _index(requests.get(url))
    resp, took = _park(url, index, "300ms")
    assert resp.status_code == 200 and _index(resp) == index
    assert 0.25 <= took < 5


def test_index_never_goes_backwards_across_many_watchers(shared_agent: AgentProcess) -> None:
    url = f"{shared_agent.url}/v1/kv/b/fanout"
    requests.put(url, data="0")
    index = _index(requests.get(url))
    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(_park, url, index, "20s") for _ in range(50)]
        time.sleep(0.5)
        requests.put(url, data="1")
        results = [f.result() for f in futures]
    assert all(_index(resp) > index and resp.json()[0]["Value"] == "MQ==" for resp, _ in results)
