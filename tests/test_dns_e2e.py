"""The registry's DNS interface end to end: a real agent, dnspython as the client, UDP and TCP.

One module-scoped agent carries a catalog built for these tests (see `catalog`); tests that need
other settings (dns_config, recursors) start their own agents and stop them.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
import requests

from tests.procs import AgentProcess, wait_until

WEB_INSTANCES = 30


# ---------------------------------------------------------------------------------------- client


def exchange(port: int, wire: bytes, tcp: bool = False, timeout: float = 3.0) -> bytes:
    """One raw query/answer over UDP or TCP (raw so tests can look at bytes dnspython would normalise)."""
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(len(wire).to_bytes(2, "big") + wire)
            return read_tcp_message(sock)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(wire, ("127.0.0.1", port))
        return sock.recv(65535)


def read_tcp_message(sock: socket.socket) -> bytes:
    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data
    return exactly(int.from_bytes(exactly(2), "big"))


class Reply:
    """A parsed answer plus the raw wire and header counts."""

    def __init__(self, query: dns.message.Message, wire: bytes):
        self.query = query
        self.wire = wire
        self.msg = dns.message.from_wire(wire, one_rr_per_rrset=True)
        self.ancount, self.nscount, self.arcount = struct.unpack_from("!3H", wire, 6)

    @property
    def rcode(self) -> int:
        return self.msg.rcode()

    def has(self, flag: int) -> bool:
        return bool(self.msg.flags & flag)

    def answers(self, rdtype: int | None = None) -> list:
        return [rrset[0] for rrset in self.msg.answer if rdtype is None or rrset.rdtype == rdtype]

    def srv(self) -> list[tuple[int, str]]:
        return sorted((rr.port, rr.target.to_text()) for rr in self.answers(dns.rdatatype.SRV))

    def additional(self) -> list:
        return list(self.msg.additional)


def ask(port: int, name: str, rdtype: str = "SRV", tcp: bool = False, payload: int | None = 4096) -> Reply:
    """payload None: no EDNS at all; else EDNS0 advertising that UDP size."""
    if payload is None:
        query = dns.message.make_query(name, rdtype)
    else:
        query = dns.message.make_query(name, rdtype, use_edns=0, payload=payload)
    return Reply(query, exchange(port, query.to_wire(), tcp))


def assert_srv_contract(reply: Reply) -> None:
    """haproxy.md §1.3: answers are SRV owned by the question; additional = one A/AAAA per SRV, named
    after its target, nothing else; OPT last when the query had EDNS; the question echoed verbatim."""
    qlen = len(reply.query.question[0].name.to_wire()) + 4
    assert reply.wire[12:12 + qlen] == reply.query.to_wire()[12:12 + qlen]
    srvs = reply.answers()
    assert all(rr.rdtype == dns.rdatatype.SRV for rr in srvs)
    assert all(rrset.name == reply.query.question[0].name for rrset in reply.msg.answer)
    extra = reply.additional()
    assert [rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for rrset in extra] == [True] * len(extra)
    assert sorted(rrset.name.to_text() for rrset in extra) == sorted(rr.target.to_text() for rr in srvs)
    opt = 1 if reply.query.edns >= 0 else 0
    assert reply.arcount == len(srvs) + opt
    if opt:
        assert reply.wire[-11:-8] == b"\x00\x00\x29"  # OPT: root owner, type 41, last in the message


# ---------------------------------------------------------------------------------------- catalog


def register(agent: AgentProcess, body: dict) -> None:
    resp = requests.put(agent.url + "/v1/catalog/register", json=body, timeout=5)
    assert resp.status_code == 200, resp.text


def db_instance(node: str, address: str, sid: str, port: int, tags: list[str], status: str,
                meta: dict | None = None) -> dict:
    return {"Node": node, "Address": address, "NodeMeta": meta or {},
            "Service": {"ID": sid, "Service": "db", "Port": port, "Tags": tags,
                        "Weights": {"Passing": 10, "Warning": 3}},
            "Check": {"CheckID": f"check-{sid}", "Name": "db", "Status": status, "ServiceID": sid}}


@pytest.fixture(scope="module")
def catalog(shared_agent: AgentProcess) -> AgentProcess:
    """db: db1 passing on db-host (IPv4, node address), db2 warning on v6host (IPv6), db3 critical;
    web: 30 instances with their own address 127.0.0.1; empty: only a critical instance;
    ext: an instance whose address is a host name."""
    agent = shared_agent
    register(agent, db_instance("db-host", "10.0.0.5", "db1", 5432, ["primary"], "passing",
                                {"rack": "r1", "rfc1035-loc": "bare"}))
    register(agent, db_instance("v6host", "fd00::5", "db2", 5433, ["replica"], "warning"))
    register(agent, db_instance("bad-host", "10.0.0.9", "db3", 5434, ["primary"], "critical"))
    for i in range(WEB_INSTANCES):
        register(agent, {"Node": "node1", "Address": "127.0.0.1", "SkipNodeUpdate": True,
                         "Service": {"ID": f"web{i}", "Service": "web", "Address": "127.0.0.1",
                                     "Port": 9000 + i}})
    register(agent, {"Node": "bad-host", "Address": "10.0.0.9",
                     "Service": {"ID": "empty1", "Service": "empty", "Port": 1},
                     "Check": {"CheckID": "empty-check", "Name": "e", "Status": "critical",
                               "ServiceID": "empty1"}})
    register(agent, {"Node": "node1", "Address": "127.0.0.1", "SkipNodeUpdate": True,
                     "Service": {"ID": "ext1", "Service": "ext", "Address": "backend.example.org",
                                 "Port": 443}})
    return agent


DB_SRV = [(5432, "db-host.node.dc1.consul."), (5433, "v6host.node.dc1.consul.")]


# ---------------------------------------------------------------------------------------- services


@pytest.mark.parametrize("name", ["db.service.consul", "db.service.dc1.consul", "db.service.dc1.dc.consul",
                                  "_db._tcp.service.consul", "_db._tcp.consul", "_db._tcp.dc1.consul",
                                  "_db._tcp.service.dc1.consul", "Db.SERVICE.Consul"])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("payload", [None, 1232], ids=["no-edns", "edns"])
def test_service_srv_forms(catalog: AgentProcess, name: str, tcp: bool, payload: int | None) -> None:
    reply = ask(catalog.dns_port, name, "SRV", tcp, payload)
    assert reply.rcode == dns.rcode.NOERROR
    assert reply.has(dns.flags.AA) and not reply.has(dns.flags.TC) and not reply.has(dns.flags.RA)
    assert reply.srv() == DB_SRV  # db3 is critical: never answered
    assert_srv_contract(reply)
    addresses = {rrset.name.to_text(): rrset[0].address for rrset in reply.additional()}
    assert addresses == {"db-host.node.dc1.consul.": "10.0.0.5", "v6host.node.dc1.consul.": "fd00::5"}
    assert {rr.weight for rr in reply.answers()} == {10, 3}  # Weights.Passing, Weights.Warning
    assert all(rrset.ttl == 0 for rrset in reply.msg.answer + reply.msg.additional)


@pytest.mark.parametrize("name,expected", [
    ("primary.db.service.consul", [DB_SRV[0]]),
    ("_db._primary.service.consul", [DB_SRV[0]]),
    ("_db._replica.consul", [DB_SRV[1]]),
    ("REPLICA.db.service.dc1.consul", [DB_SRV[1]]),
])
def test_tag_filter(catalog: AgentProcess, name: str, expected: list) -> None:
    reply = ask(catalog.dns_port, name)
    assert reply.srv() == expected
    assert_srv_contract(reply)


def test_service_addresses(catalog: AgentProcess) -> None:
    port = catalog.dns_port
    assert [rr.address for rr in ask(port, "db.service.consul", "A").answers()] == ["10.0.0.5"]
    assert [rr.address for rr in ask(port, "db.service.consul", "AAAA").answers()] == ["fd00::5"]
    any_answers = ask(port, "db.service.consul", "ANY").answers()
    assert sorted(rr.address for rr in any_answers) == ["10.0.0.5", "fd00::5"]
    web = ask(port, "web.service.consul", "A")
    assert [rr.address for rr in web.answers()] == ["127.0.0.1"]  # one record per distinct address
    assert not any(rrset.rdtype == dns.rdatatype.TXT for rrset in web.msg.additional)


def test_host_name_address(catalog: AgentProcess) -> None:
    srv = ask(catalog.dns_port, "ext.service.consul")
    assert srv.srv() == [(443, "backend.example.org.")]
    assert srv.arcount == 1  # only the OPT: a host name target has no address record of ours
    cname = ask(catalog.dns_port, "ext.service.consul", "A").answers()
    assert [rr.target.to_text() for rr in cname] == ["backend.example.org."]


def test_srv_targets_with_own_address(catalog: AgentProcess) -> None:
    reply = ask(catalog.dns_port, "web.service.consul", "SRV", tcp=True)
    assert len(reply.answers()) == WEB_INSTANCES
    assert {rr.target.to_text() for rr in reply.answers()} == {"7f000001.addr.dc1.consul."}
    assert_srv_contract(reply)


# ---------------------------------------------------------------------------------------- nodes, addr, PTR


def test_node_lookups(catalog: AgentProcess) -> None:
    port = catalog.dns_port
    for name in ("db-host.node.consul", "db-host.node.dc1.consul", "DB-HOST.node.dc1.dc.consul"):
        assert [rr.address for rr in ask(port, name, "A", payload=None).answers()] == ["10.0.0.5"]
    txt = ask(port, "db-host.node.consul", "TXT").answers()
    assert sorted(b"".join(rr.strings).decode() for rr in txt) == ["bare", "rack=r1"]
    assert [rr.address for rr in ask(port, "v6host.node.consul", "AAAA").answers()] == ["fd00::5"]
    assert [rr.address for rr in ask(port, "node1.node.consul", "A", tcp=True).answers()] == ["127.0.0.1"]


def test_addr_lookups(catalog: AgentProcess) -> None:
    port = catalog.dns_port
    assert [rr.address for rr in ask(port, "0a000005.addr.dc1.consul", "A").answers()] == ["10.0.0.5"]
    v6 = "fd000000000000000000000000000005.addr.dc1.consul"
    assert [rr.address for rr in ask(port, v6, "AAAA").answers()] == ["fd00::5"]
    nodata = ask(port, "0a000005.addr.dc1.consul", "AAAA")
    assert nodata.rcode == dns.rcode.NOERROR and not nodata.answers() and nodata.nscount == 1
    assert ask(port, "zz000005.addr.dc1.consul", "A").rcode == dns.rcode.NXDOMAIN


def test_ptr(catalog: AgentProcess) -> None:
    port = catalog.dns_port
    v4 = ask(port, dns.reversename.from_address("10.0.0.5").to_text(), "PTR")
    assert [rr.target.to_text() for rr in v4.answers()] == ["db-host.node.dc1.consul."]
    v6 = ask(port, dns.reversename.from_address("fd00::5").to_text(), "PTR", tcp=True)
    assert [rr.target.to_text() for rr in v6.answers()] == ["v6host.node.dc1.consul."]
    unknown = ask(port, dns.reversename.from_address("192.0.2.77").to_text(), "PTR")
    assert unknown.rcode == dns.rcode.NXDOMAIN  # no recursor: not ours, not forwarded


# ---------------------------------------------------------------------------------------- negative answers


def soa_of(reply: Reply):
    assert reply.nscount == 1
    rrset = reply.msg.authority[0]
    assert rrset.rdtype == dns.rdatatype.SOA and rrset.name.to_text() == "consul."
    return rrset[0]


@pytest.mark.parametrize("name,rdtype,rcode", [
    ("nosuch.service.consul", "SRV", dns.rcode.NXDOMAIN),
    ("empty.service.consul", "SRV", dns.rcode.NXDOMAIN),  # only critical instances
    ("nosuchtag.db.service.consul", "SRV", dns.rcode.NXDOMAIN),
    ("db.service.dc2.consul", "SRV", dns.rcode.NXDOMAIN),  # another datacenter
    ("whatever.consul", "A", dns.rcode.NXDOMAIN),
    ("x.query.consul", "SRV", dns.rcode.NXDOMAIN),  # prepared queries are not served
    ("nosuch.node.consul", "A", dns.rcode.NXDOMAIN),
    ("db.service.consul", "TXT", dns.rcode.NOERROR),  # NODATA: the name exists
    ("db-host.node.consul", "AAAA", dns.rcode.NOERROR),
    ("consul", "A", dns.rcode.NOERROR),
])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_negative_answers_carry_soa(catalog: AgentProcess, name: str, rdtype: str, rcode: int,
                                   tcp: bool) -> None:
    reply = ask(catalog.dns_port, name, rdtype, tcp)
    assert reply.rcode == rcode and reply.ancount == 0 and reply.has(dns.flags.AA)
    soa = soa_of(reply)
    assert (soa.mname.to_text(), soa.rname.to_text()) == ("ns.consul.", "hostmaster.consul.")
    assert (soa.refresh, soa.retry, soa.expire, soa.minimum) == (3600, 600, 86400, 0)
    assert soa.serial > 1_600_000_000  # unix time


def test_soa_query_and_outside_domain(catalog: AgentProcess) -> None:
    soa = ask(catalog.dns_port, "consul", "SOA")
    assert soa.rcode == dns.rcode.NOERROR and soa.answers()[0].mname.to_text() == "ns.consul."
    inner = ask(catalog.dns_port, "db.service.consul", "SOA")  # any name of ours: the domain's SOA
    assert [rrset.name.to_text() for rrset in inner.msg.answer] == ["consul."]
    ns = ask(catalog.dns_port, "consul", "NS", tcp=True)
    assert [rr.target.to_text() for rr in ns.answers()] == ["ns.consul."]
    for tcp in (False, True):
        outside = ask(catalog.dns_port, "example.com", "A", tcp)
        assert outside.rcode == dns.rcode.SERVFAIL  # no recursor: never an open resolver
        assert not outside.has(dns.flags.AA) and not outside.has(dns.flags.RA)


# ---------------------------------------------------------------------------------------- sizes


def test_udp_without_edns_uses_answer_limit(catalog: AgentProcess) -> None:
    reply = ask(catalog.dns_port, "web.service.consul", "SRV", payload=None)
    assert len(reply.answers()) == 3  # udp_answer_limit default
    assert not reply.has(dns.flags.TC)  # cut by the limit, not by size: TC only with enable_truncate
    assert len(reply.wire) <= 512
    assert_srv_contract(reply)


@pytest.mark.parametrize("payload", [512, 1232])
def test_edns_answer_trimmed_with_tc(catalog: AgentProcess, payload: int) -> None:
    reply = ask(catalog.dns_port, "web.service.consul", "SRV", payload=payload)
    assert reply.has(dns.flags.TC) and len(reply.wire) <= payload
    assert 1 <= len(reply.answers()) < WEB_INSTANCES
    assert_srv_contract(reply)  # each kept SRV kept its A record, OPT still last


def test_large_answers_fit(catalog: AgentProcess) -> None:
    for tcp, payload in ((False, 8192), (True, None), (True, 512)):
        reply = ask(catalog.dns_port, "web.service.consul", "SRV", tcp, payload)
        assert len(reply.answers()) == WEB_INSTANCES and not reply.has(dns.flags.TC)
        assert_srv_contract(reply)


# ---------------------------------------------------------------------------------------- order, cache, TCP


def test_random_order_from_few_pre_encoded_answers(catalog: AgentProcess) -> None:
    """Order varies per query, but the same catalog state is encoded only a few times (not per query)."""
    query = dns.message.make_query("web.service.consul", "SRV", use_edns=0, payload=8192)
    bodies = {exchange(catalog.dns_port, query.to_wire())[2:] for _ in range(60)}
    assert 2 <= len(bodies) <= 8


def test_tcp_pipelining(catalog: AgentProcess) -> None:
    names = ["db.service.consul", "web.service.consul", "db-host.node.consul", "nosuch.service.consul"]
    queries = [dns.message.make_query(n, "SRV" if "service" in n else "A", use_edns=0) for n in names]
    with socket.create_connection(("127.0.0.1", catalog.dns_port), timeout=3) as sock:
        for _ in range(2):  # the connection stays usable after a batch
            sock.sendall(b"".join(len(w).to_bytes(2, "big") + w for w in (q.to_wire() for q in queries)))
            replies = [dns.message.from_wire(read_tcp_message(sock)) for _ in queries]
            assert sorted(r.id for r in replies) == sorted(q.id for q in queries)
            by_id = {r.id: r for r in replies}
            assert by_id[queries[3].id].rcode() == dns.rcode.NXDOMAIN
            assert len(by_id[queries[1].id].answer[0]) == WEB_INSTANCES


def test_answers_follow_health_changes(catalog: AgentProcess) -> None:
    """A cached answer is dropped when its service changes: check fail/pass, deregistration."""
    url, port = catalog.url, catalog.dns_port
    for i in (1, 2):
        resp = requests.put(url + "/v1/agent/service/register", timeout=5, json={
            "ID": f"flap{i}", "Name": "flap", "Address": "127.0.0.1", "Port": 7000 + i,
            "Check": {"TTL": "60s", "Status": "passing"}})
        assert resp.status_code == 200, resp.text

    def ports() -> set[int]:
        reply = ask(port, "flap.service.consul")
        return {p for p, _ in reply.srv()} if reply.rcode == dns.rcode.NOERROR else set()

    wait_until(lambda: ports() == {7001, 7002}, message="both flap instances")
    requests.put(url + "/v1/agent/check/fail/service:flap1", timeout=5)
    wait_until(lambda: ports() == {7002}, message="critical flap1 gone")
    requests.put(url + "/v1/agent/check/warn/service:flap1", timeout=5)
    wait_until(lambda: ports() == {7001, 7002}, message="warning flap1 back (only_passing is off)")
    requests.put(url + "/v1/agent/service/deregister/flap2", timeout=5)
    wait_until(lambda: ports() == {7001}, message="deregistered flap2 gone")
    requests.put(url + "/v1/agent/service/deregister/flap1", timeout=5)
    wait_until(lambda: ask(port, "flap.service.consul").rcode == dns.rcode.NXDOMAIN, message="NXDOMAIN")


# ---------------------------------------------------------------------------------------- bad packets


def test_bad_packets(catalog: AgentProcess) -> None:
    port = catalog.dns_port
    good = dns.message.make_query("db.service.consul", "SRV")
    wire = good.to_wire()
    formerr = exchange(port, wire[:2] + b"\x01\x00\x00\x02" + wire[6:])  # QDCOUNT 2 with one question
    assert formerr[:2] == wire[:2] and formerr[3] & 0xF == dns.rcode.FORMERR
    truncated = exchange(port, wire[:-3])
    assert truncated[3] & 0xF == dns.rcode.FORMERR
    notify = dns.message.make_query("db.service.consul", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert Reply(notify, exchange(port, notify.to_wire())).rcode == dns.rcode.NOTIMP
    badvers = dns.message.make_query("db.service.consul", "SRV", use_edns=1)
    assert Reply(badvers, exchange(port, badvers.to_wire())).rcode == dns.rcode.BADVERS
    chaos = dns.message.make_query("version.bind", "TXT", "CH")
    assert Reply(chaos, exchange(port, chaos.to_wire())).rcode == dns.rcode.REFUSED
    axfr = dns.message.make_query("consul", "AXFR")
    assert Reply(axfr, exchange(port, axfr.to_wire(), tcp=True)).rcode == dns.rcode.NOTIMP
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # too short / a response: no answer
        sock.settimeout(0.3)
        for junk in (b"\x00\x01\x02", bytes([wire[0], wire[1], 0x80]) + wire[3:]):
            sock.sendto(junk, ("127.0.0.1", port))
            with pytest.raises(TimeoutError):
                sock.recv(4096)
    assert ask(port, "db.service.consul").srv() == DB_SRV


# ---------------------------------------------------------------------------------------- settings, recursors


@pytest.fixture
def tuned_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    config = tmp_path / "dns.json"
    config.write_text(json.dumps({"dns_config": {
        "only_passing": True, "node_ttl": "10s", "service_ttl": {"*": "5s", "db": "30s"},
        "udp_answer_limit": 2, "a_record_limit": 1, "enable_truncate": True, "soa": {"min_ttl": 7}}}))
    proc = AgentProcess(extra_args=["-config-file", str(config)]).start(tmp_path)
    yield proc
    proc.stop()


def test_dns_config(tuned_agent: AgentProcess) -> None:
    agent, port = tuned_agent, tuned_agent.dns_port
    register(agent, db_instance("db-host", "10.0.0.5", "db1", 5432, [], "passing"))
    register(agent, db_instance("v6host", "fd00::5", "db2", 5433, [], "warning"))
    for i in range(4):
        register(agent, {"Node": f"n{i}", "Address": f"10.1.0.{i + 1}",
                         "Service": {"ID": f"api{i}", "Service": "api", "Port": 80}})
    db = ask(port, "db.service.consul")
    assert db.srv() == [DB_SRV[0]]  # only_passing drops the warning instance
    assert {rrset.ttl for rrset in db.msg.answer + db.msg.additional} == {30}
    api = ask(port, "api.service.consul", payload=None)
    assert len(api.answers()) == 2 and api.has(dns.flags.TC)  # udp_answer_limit, enable_truncate
    assert {rrset.ttl for rrset in api.msg.answer} == {5}
    assert len(ask(port, "api.service.consul", "A", tcp=True).answers()) == 1  # a_record_limit
    assert ask(port, "n1.node.consul", "A").msg.answer[0].ttl == 10
    assert soa_of(ask(port, "nosuch.service.consul")).minimum == 7


def test_recursor_forwarding(tmp_path: Path) -> None:
    """-recursor forwards names outside the domain (UDP and TCP); our names are never forwarded."""
    upstream = AgentProcess(extra_args=["-domain", "upstream"]).start(tmp_path)
    agent = None
    try:
        agent = AgentProcess(extra_args=["-recursor", f"127.0.0.1:{upstream.dns_port}"]).start(tmp_path)
        for tcp in (False, True):
            reply = ask(agent.dns_port, "node1.node.upstream", "A", tcp)
            assert reply.rcode == dns.rcode.NOERROR and reply.has(dns.flags.RA)
            assert [rr.address for rr in reply.answers()] == ["127.0.0.1"]
            assert reply.msg.id == reply.query.id
        missing = ask(agent.dns_port, "nosuch.node.upstream", "A")
        assert missing.rcode == dns.rcode.NXDOMAIN and missing.msg.authority[0].name.to_text() == "upstream."
        ours = ask(agent.dns_port, "nosuch.node.consul", "A")
        assert ours.rcode == dns.rcode.NXDOMAIN and ours.has(dns.flags.AA) and ours.has(dns.flags.RA)
        upstream.stop()
        failed = ask(agent.dns_port, "node1.node.upstream", "A")
        assert failed.rcode == dns.rcode.SERVFAIL
    finally:
        if agent is not None:
            agent.stop()
        upstream.stop()
