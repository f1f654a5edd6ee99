"""The registry's HTTP API through real clients: py-consul and raw HTTP against a real agent process."""

from __future__ import annotations

import base64
import threading

import consul
import pytest
import requests

from tests.procs import AgentProcess


@pytest.fixture
def c(shared_agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=shared_agent.http_port)


@pytest.fixture
def url(shared_agent: AgentProcess) -> str:
    return shared_agent.url


# ---------------------------------------------------------------- agent services


def test_plain_service_serialises_exactly_as_consul(c: consul.Consul) -> None:
    c.agent.service.register("plain")
    assert c.agent.services()["plain"] == {
        "ID": "plain", "Service": "plain", "Tags": [], "Meta": {}, "Port": 0, "Address": "",
        "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False, "Datacenter": "dc1"}


def test_service_registration_round_trips_every_field(url: str, c: consul.Consul) -> None:
    body = {"Name": "api", "ID": "api-1", "Tags": ["v1", "blue"], "Address": "127.0.0.2", "Port": 9001,
            "Meta": {"edge-host": "api.example", "version": "1"},
            "TaggedAddresses": {"lan": {"Address": "127.0.0.2", "Port": 9001}},
            "Weights": {"Passing": 10, "Warning": 2}, "EnableTagOverride": True}
    assert requests.put(f"{url}/v1/agent/service/register", json=body).status_code == 200
    svc = c.agent.services()["api-1"]
    assert svc == {**{k: v for k, v in body.items() if k != "Name"}, "Service": "api", "Datacenter": "dc1"}
    _, entries = c.catalog.service("api")
    entry = entries[0]
    assert (entry["ServiceID"], entry["ServiceAddress"], entry["ServicePort"]) == ("api-1", "127.0.0.2", 9001)
    assert entry["ServiceWeights"] == {"Passing": 10, "Warning": 2}
    assert entry["ServiceTaggedAddresses"] == {"lan": {"Address": "127.0.0.2", "Port": 9001}}
    assert entry["ServiceMeta"] == body["Meta"] and entry["ServiceEnableTagOverride"] is True


def test_snake_case_and_lower_case_keys_are_accepted(url: str, c: consul.Consul) -> None:
    body = {"name": "snake", "service_id": "snake-1", "tags": ["x"], "port": 1,
            "enable_tag_override": True, "tagged_addresses": {"wan": {"address": "10.0.0.1", "port": 2}}}
    assert requests.put(f"{url}/v1/agent/service/register", json=body).status_code == 200
    svc = c.agent.services()["snake-1"]
    assert svc["EnableTagOverride"] is True and svc["TaggedAddresses"]["wan"] == {"Address": "10.0.0.1", "Port": 2}


def test_service_ids_with_reserved_characters(c: consul.Consul) -> None:
    c.agent.service.register("app", service_id="app#127.0.0.1#3000", port=3000)
    assert "app#127.0.0.1#3000" in c.agent.services()
    assert c.agent.service.deregister("app#127.0.0.1#3000")
    assert "app#127.0.0.1#3000" not in c.agent.services()


def test_deregister_unknown_service_is_404_with_consul_text(url: str) -> None:
    resp = requests.put(f"{url}/v1/agent/service/deregister/nope")
    assert resp.status_code == 404
    assert resp.text == 'Unknown service ID "nope". Ensure that the service ID is passed, not the service name.'


def test_agent_service_by_id(url: str, c: consul.Consul) -> None:
    c.agent.service.register("one", service_id="one-1", port=5)
    assert requests.get(f"{url}/v1/agent/service/one-1").json()["Port"] == 5
    assert requests.get(f"{url}/v1/agent/service/missing").status_code == 404


def test_agent_self_and_members_are_consistent(c: consul.Consul) -> None:
    me = c.agent.self()
    assert set(me) == {"Config", "DebugConfig", "Coord", "Member", "Stats", "Meta", "xDS"}
    assert me["Config"]["NodeName"] == "node1" and me["Config"]["Server"] is True
    assert me["Stats"]["consul"]["leader_addr"] == c.status.leader()
    assert c.agent.members() == [me["Member"]]
    assert c.status.leader() in c.status.peers()


def test_self_node_consul_service_and_serf_health(c: consul.Consul) -> None:
    _, nodes = c.catalog.nodes()
    assert any(n["Node"] == "node1" for n in nodes)
    _, services = c.catalog.services()
    assert services["consul"] == []
    _, checks = c.health.node("node1")
    serf = next(ch for ch in checks if ch["CheckID"] == "serfHealth")
    assert (serf["Status"], serf["Output"]) == ("passing", "Agent alive and reachable")


# ---------------------------------------------------------------- catalog


def test_catalog_register_and_deregister(url: str, c: consul.Consul) -> None:
    # py-consul sends node_meta as a query parameter (Consul ignores it there), so NodeMeta goes in the body
    assert requests.put(f"{url}/v1/catalog/register", json={
        "Node": "ext1", "Address": "10.1.0.1", "NodeMeta": {"rack": "r1"},
        "Service": {"Service": "db", "ID": "db1", "Port": 5432, "Tags": ["primary"]},
        "Check": {"Name": "db alive", "Status": "passing", "ServiceID": "db1"}}).json() is True
    _, entries = c.catalog.service("db", tag="primary")
    assert [e["Node"] for e in entries] == ["ext1"] and entries[0]["NodeMeta"] == {"rack": "r1"}
    assert c.catalog.service("db", tag="replica")[1] == []
    _, node = c.catalog.node("ext1")
    assert set(node["Services"]) == {"db1"}
    _, health = c.health.service("db", passing=True)
    assert [h["Service"]["ID"] for h in health] == ["db1"]
    assert c.catalog.deregister("ext1", service_id="db1")
    assert c.catalog.service("db")[1] == []
    assert c.catalog.deregister("ext1")
    assert c.catalog.node("ext1")[1] is None


def test_catalog_nodes_node_meta_filter(url: str, c: consul.Consul) -> None:
    for node, zone in (("meta-a", "a"), ("meta-b", "b")):
        requests.put(f"{url}/v1/catalog/register", json={"Node": node, "Address": "10.2.0.1",
                                                         "NodeMeta": {"zone": zone}})
    _, nodes = c.catalog.nodes(node_meta={"zone": "a"})
    assert [n["Node"] for n in nodes] == ["meta-a"]


def test_catalog_services_lists_distinct_tags(c: consul.Consul) -> None:
    c.catalog.register("tags-1", "10.3.0.1", service={"Service": "tagged", "ID": "t1", "Tags": ["b", "a"]})
    c.catalog.register("tags-2", "10.3.0.2", service={"Service": "tagged", "ID": "t2", "Tags": ["a", "c"]})
    assert c.catalog.services()[1]["tagged"] == ["a", "b", "c"]


def test_catalog_register_requires_node_and_address(url: str) -> None:
    resp = requests.put(f"{url}/v1/catalog/register", json={"Node": "x"})
    assert (resp.status_code, resp.text) == (500, "Must provide node and address")


def test_datacenters_and_unknown_dc(url: str, c: consul.Consul) -> None:
    assert c.catalog.datacenters() == ["dc1"]
    resp = requests.get(f"{url}/v1/catalog/nodes?dc=dc9")
    assert (resp.status_code, resp.text) == (500, "No path to datacenter")


# ---------------------------------------------------------------- KV


def test_kv_put_get_flags_and_empty_value(c: consul.Consul) -> None:
    assert c.kv.put("t/kv/a", "1", flags=42)
    _, entry = c.kv.get("t/kv/a")
    assert (entry["Value"], entry["Flags"], entry["LockIndex"]) == (b"1", 42, 0)
    assert c.kv.put("t/kv/a", "2")
    assert c.kv.get("t/kv/a")[1]["Flags"] == 0  # flags reset on every put, as Consul
    assert c.kv.put("t/kv/empty", "")
    assert c.kv.get("t/kv/empty")[1]["Value"] is None
    assert c.kv.get("t/kv/missing")[1] is None


def test_kv_recurse_keys_separator(c: consul.Consul) -> None:
    for key in ("t/sep/base/base/x", "t/sep/base/foo", "t/sep/base/base/y", "t/sep/other"):
        c.kv.put(key, "v")
    _, entries = c.kv.get("t/sep/base/", recurse=True)
    assert [e["Key"] for e in entries] == ["t/sep/base/base/x", "t/sep/base/base/y", "t/sep/base/foo"]
    _, keys = c.kv.get("t/sep/base/", keys=True, separator="/")
    assert keys == ["t/sep/base/base/", "t/sep/base/foo"]
    _, keys = c.kv.get("t/sep/", keys=True)
    assert keys == ["t/sep/base/base/x", "t/sep/base/base/y", "t/sep/base/foo", "t/sep/other"]
    assert c.kv.get("t/sep/none/", recurse=True)[1] is None


def test_kv_raw(url: str, c: consul.Consul) -> None:
    c.kv.put("t/raw", b"\x00\x01binary")
    resp = requests.get(f"{url}/v1/kv/t/raw?raw")
    assert resp.content == b"\x00\x01binary"
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert int(resp.headers["X-Consul-Index"]) >= 1


def test_kv_cas_and_delete(c: consul.Consul) -> None:
    assert c.kv.put("t/cas", "v0", cas=0)
    assert not c.kv.put("t/cas", "again", cas=0)
    _, entry = c.kv.get("t/cas")
    assert not c.kv.put("t/cas", "v1", cas=entry["ModifyIndex"] + 1000)
    assert c.kv.put("t/cas", "v1", cas=entry["ModifyIndex"])
    _, entry = c.kv.get("t/cas")
    assert not c.kv.delete("t/cas", cas=entry["ModifyIndex"] - 1)
    assert c.kv.delete("t/cas", cas=entry["ModifyIndex"])
    assert c.kv.get("t/cas")[1] is None
    assert c.kv.delete("t/cas")  # absent: still true


def test_kv_delete_recurse(c: consul.Consul) -> None:
    for key in ("t/del/a", "t/del/b/c", "t/delx"):
        c.kv.put(key, "v")
    assert c.kv.delete("t/del/", recurse=True)
    assert c.kv.get("t/del/", recurse=True)[1] is None
    assert c.kv.get("t/delx")[1] is not None


def test_cas_race_between_two_clients_has_one_winner(shared_agent: AgentProcess) -> None:
    url = f"{shared_agent.url}/v1/kv/t/race"
    requests.put(url, data="start")
    index = requests.get(url).json()[0]["ModifyIndex"]
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def contender(n: int) -> None:
        barrier.wait()
        results.append(requests.put(f"{url}?cas={index}", data=f"client{n}").json())

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    winner = base64.b64decode(requests.get(url).json()[0]["Value"]).decode()
    assert winner.startswith("client")


# ---------------------------------------------------------------- sessions and locks


def test_session_lifecycle(c: consul.Consul) -> None:
    sid = c.session.create(name="s1", ttl=15, behavior="release")
    _, info = c.session.info(sid)
    assert info["Name"] == "s1" and info["TTL"] == "15s" and info["Node"] == "node1"
    assert info["LockDelay"] == 15_000_000_000 and info["NodeChecks"] == ["serfHealth"]
    assert sid in [s["ID"] for s in c.session.list()[1]]
    assert sid in [s["ID"] for s in c.session.node("node1")[1]]
    assert c.session.renew(sid)["ID"] == sid
    assert c.session.destroy(sid)
    assert c.session.info(sid)[1] is None
    with pytest.raises(consul.NotFound):
        c.session.renew(sid)


def test_lock_acquire_release_and_lock_index(c: consul.Consul) -> None:
    s1 = c.session.create(lock_delay=0)
    s2 = c.session.create(lock_delay=0)
    assert c.kv.put("t/lock", "leader1", acquire=s1)
    assert not c.kv.put("t/lock", "leader2", acquire=s2)
    _, entry = c.kv.get("t/lock")
    assert entry["Session"] == s1 and entry["LockIndex"] == 1
    assert c.kv.put("t/lock", "again", acquire=s1)  # re-acquire by holder: no new LockIndex
    assert c.kv.get("t/lock")[1]["LockIndex"] == 1
    assert not c.kv.put("t/lock", "x", release=s2)
    assert c.kv.put("t/lock", "bye", release=s1)
    assert "Session" not in c.kv.get("t/lock")[1]
    assert c.kv.put("t/lock", "leader2", acquire=s2)
    assert c.kv.get("t/lock")[1]["LockIndex"] == 2


def test_destroying_a_session_releases_or_deletes_its_keys(c: consul.Consul) -> None:
    keep = c.session.create(behavior="release", lock_delay=0)
    drop = c.session.create(behavior="delete", lock_delay=0)
    c.kv.put("t/held/release", "v", acquire=keep)
    c.kv.put("t/held/delete", "v", acquire=drop)
    c.session.destroy(keep)
    c.session.destroy(drop)
    assert "Session" not in c.kv.get("t/held/release")[1]
    assert c.kv.get("t/held/delete")[1] is None


def test_lock_delay_blocks_other_sessions_after_invalidation(c: consul.Consul) -> None:
    holder = c.session.create(lock_delay=10)
    other = c.session.create(lock_delay=0)
    c.kv.put("t/delayed", "v", acquire=holder)
    c.session.destroy(holder)
    assert not c.kv.put("t/delayed", "mine", acquire=other)


def test_acquire_with_unknown_session_is_500(url: str) -> None:
    resp = requests.put(f"{url}/v1/kv/t/unknown-session?acquire=00000000-0000-0000-0000-00000000abcd", data="x")
    assert resp.status_code == 500 and "session" in resp.text.lower()


def test_session_with_ttl_expires_without_renewal(dev_agent: AgentProcess) -> None:
    """TTL sessions are invalidated after 2×TTL without renewal and release their locks."""
    c = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
    sid = c.session.create(ttl=10, lock_delay=0)
    c.kv.put("expiring", "v", acquire=sid)
    index, _ = c.session.info(sid)
    # park on the session until it disappears: a blocking read must wake for it
    _, info = c.session.info(sid, index=index, wait="30s")
    assert info is None
    assert "Session" not in c.kv.get("expiring")[1]


def test_deregistering_the_agents_own_node_puts_it_back(dev_agent: AgentProcess) -> None:
    """As Consul's anti-entropy does: the node, its services and serfHealth return; sessions work again."""
    c = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
    c.agent.service.register("kept", service_id="kept-1", port=1)
    assert c.catalog.deregister("node1")
    assert "kept-1" in c.catalog.node("node1")[1]["Services"]
    assert any(ch["CheckID"] == "serfHealth" for ch in c.health.node("node1")[1])
    assert c.session.create(name="after")  # needs the node and serfHealth
