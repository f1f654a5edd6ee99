"""DNS pieces in process: name rules, query parsing, trimming and pointers, the cache, the ACL hook.

These run against a real in-memory Store (no sockets); the end-to-end behaviour is in test_dns_e2e.py.
"""

from __future__ import annotations

import asyncio
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from registry import dnsnames
from registry.dns import DnsServer, DnsSettings, Ignored, Malformed, parse_query
from registry.dnsnames import Lookup
from registry.persistence import MemoryPersistence
from registry.store import Store

DOMAIN = dnsnames.split_domain("consul.")


def classify(name: str) -> Lookup:
    return dnsnames.classify([label.encode().lower() for label in name.strip(".").split(".")], DOMAIN, "dc1")


@pytest.mark.parametrize("name,expected", [
    ("web.service.consul", Lookup("service", "web")),
    ("v1.web.service.dc1.consul", Lookup("service", "web", "v1")),
    ("a.b.web.service.consul", Lookup("service", "web", "a.b")),
    ("web.service.dc1.dc.consul", Lookup("service", "web")),
    ("_web._tcp.service.consul", Lookup("service", "web")),
    ("_web._http.consul", Lookup("service", "web", "http")),
    ("_web._tcp.dc1.consul", Lookup("service", "web")),
    ("n1.node.consul", Lookup("node", "n1")),
    ("service.node.consul", Lookup("node", "service")),
    ("c0a80001.addr.dc1.consul", Lookup("addr", address="192.168.0.1")),
    ("1.0.168.192.in-addr.arpa", Lookup("ptr", address="192.168.0.1")),
    ("consul", Lookup("apex")),
    ("example.com", Lookup("outside")),
    ("web.service.dc2.consul", Lookup("invalid")),
    ("web.service.dc1.xx.consul", Lookup("invalid")),
    ("_web.tcp.consul", Lookup("invalid")),
    ("x.query.consul", Lookup("invalid")),
    ("service.consul", Lookup("invalid")),
    ("foo.consul", Lookup("invalid")),
    ("1.2.in-addr.arpa", Lookup("ptr")),
])
def test_classify(name: str, expected: Lookup) -> None:
    assert classify(name) == expected


def test_hex_addresses_round_trip() -> None:
    assert dnsnames.ip_to_hex("192.0.2.10") == "c000020a"
    assert dnsnames.hex_to_ip("c000020a") == "192.0.2.10"
    assert dnsnames.hex_to_ip(dnsnames.ip_to_hex("2001:db8::1")) == "2001:db8::1"
    assert dnsnames.hex_to_ip("c00002") == "" and dnsnames.hex_to_ip("zz00020a") == ""


def test_compression_only_against_question() -> None:
    suffixes = dnsnames.question_suffixes([b"Web", b"service", b"consul"])
    assert suffixes[(b"consul",)] == 12 + 4 + 8
    wire = dnsnames.encode_compressed([b"ns", b"CONSUL"], suffixes)
    assert wire == b"\x02ns" + (0xC000 | 24).to_bytes(2, "big")
    assert dnsnames.encode_compressed([b"other"], suffixes) == b"\x05other\x00"


def test_parse_query_rejects_what_it_cannot_read() -> None:
    wire = dns.message.make_query("web.service.consul", "SRV", use_edns=0, payload=1400).to_wire()
    query = parse_query(wire)
    assert query.edns == (1400, 0, 0) and query.qtype == dns.rdatatype.SRV and query.labels[0] == b"web"
    with pytest.raises(Ignored):
        parse_query(wire[:11])
    with pytest.raises(Ignored):
        parse_query(wire[:2] + bytes([wire[2] | 0x80]) + wire[3:])
    for bad in (wire[:-5], wire[:4] + b"\x00\x00" + wire[6:], wire[:12] + b"\xc0\x0c" + wire[16:]):
        with pytest.raises(Malformed):
            parse_query(bad)


# ---------------------------------------------------------------------------------------- in-process server


def run(coro):  # noqa: ANN001, ANN201 - test helper
    return asyncio.run(coro)


def make_store(instances: int, node_address: str = "10.0.0.1") -> Store:
    store = Store(MemoryPersistence(), "node1")

    async def fill() -> None:
        for i in range(instances):
            node = {"Node": f"node-{i:04d}", "Address": node_address, "Meta": {}}
            service = {"ID": f"web{i}", "Service": "web", "Tags": [], "Address": "", "Port": 1000 + i,
                       "Weights": {"Passing": 1, "Warning": 1}}
            await store.catalog_register(node, service, [])
        await store.catalog_register({"Node": "secret-node", "Address": "10.9.9.9", "Meta": {}},
                                     {"ID": "s1", "Service": "secret", "Tags": [], "Address": "", "Port": 1,
                                      "Weights": {"Passing": 1, "Warning": 1}}, [])
    run(fill())
    return store


def answer(server: DnsServer, query: dns.message.Message, tcp: bool = False) -> bytes:
    out: list[bytes] = []
    server.answer(query.to_wire(), tcp, out.append)
    assert len(out) == 1
    return out[0]


def test_big_tcp_answer_points_only_where_pointers_reach() -> None:
    """Past 16 KiB a compression pointer cannot reach the SRV target: the A owner is written in full."""
    server = DnsServer(make_store(600), DnsSettings())
    wire = answer(server, dns.message.make_query("web.service.consul", "SRV"), tcp=True)
    assert len(wire) > 0x4000
    msg = dns.message.from_wire(wire, one_rr_per_rrset=True)
    assert len(msg.answer) == 600 and len(msg.additional) == 600
    targets = {rrset[0].port: rrset[0].target for rrset in msg.answer}
    assert {rrset.name for rrset in msg.additional} == set(targets.values())


def test_trimmed_answer_keeps_pairs_and_rotates() -> None:
    server = DnsServer(make_store(50), DnsSettings())
    query = dns.message.make_query("web.service.consul", "SRV", use_edns=0, payload=1232)
    seen: set[int] = set()
    for _ in range(40):
        wire = answer(server, query)
        assert len(wire) <= 1232 and wire[2] & (dns.flags.TC >> 8)
        msg = dns.message.from_wire(wire, one_rr_per_rrset=True)
        assert len(msg.answer) == len(msg.additional) > 0
        seen.update(rrset[0].port for rrset in msg.answer)
    assert len(seen) > 30  # trimmed answers still spread over the instances


def test_cache_invalidated_by_topics_only() -> None:
    store = make_store(3)
    server = DnsServer(store, DnsSettings())
    query = dns.message.make_query("web.service.consul", "SRV")
    answer(server, query)
    entry = next(iter(server.cache.by_key.values()))
    server.on_commit(type("T", (), {"topics": {"kv", "kv:x"}})())
    assert entry.valid
    server.on_commit(type("T", (), {"topics": {"service:other"}})())
    assert entry.valid
    server.on_commit(type("T", (), {"topics": {"service:WEB"}})())  # names are case-insensitive
    assert not entry.valid and not server.cache.by_key
    answer(server, dns.message.make_query("nosuch.service.consul", "SRV"))
    negative = next(iter(server.cache.by_key.values()))
    server.on_commit(type("T", (), {"topics": {"services", "service:NoSuch", "node:node1"}})())
    assert not negative.valid


class DenySecret:
    """Stands in for issue 8's ACL object: the anonymous token may not read `secret*`."""

    def dns_allows_service(self, name: str) -> bool:
        return not name.startswith("secret")

    def dns_allows_node(self, name: str) -> bool:
        return not name.startswith("secret")


def test_acl_hook_hides_services_and_nodes() -> None:
    app: dict = {}
    store = make_store(1)
    server = DnsServer(store, DnsSettings(), app)

    def rcode(name: str, rdtype: str) -> int:
        return dns.message.from_wire(answer(server, dns.message.make_query(name, rdtype))).rcode()

    assert rcode("secret.service.consul", "SRV") == dns.rcode.NOERROR
    app["acl"] = DenySecret()
    server.on_commit(type("T", (), {"topics": {"acl"}})())
    assert rcode("secret.service.consul", "SRV") == dns.rcode.NXDOMAIN
    assert rcode("secret-node.node.consul", "A") == dns.rcode.NXDOMAIN
    assert rcode("web.service.consul", "SRV") == dns.rcode.NOERROR
    ptr = dns.message.from_wire(answer(server, dns.message.make_query("9.9.9.10.in-addr.arpa", "PTR")))
    assert ptr.rcode() == dns.rcode.NXDOMAIN


def test_answer_header_counts() -> None:
    server = DnsServer(make_store(2), DnsSettings())
    wire = answer(server, dns.message.make_query("web.service.consul", "SRV", use_edns=0))
    flags, qd, an, ns, ar = struct.unpack_from("!5H", wire, 2)
    assert (qd, an, ns, ar) == (1, 2, 0, 3) and flags & dns.flags.AA


def test_settings_from_config() -> None:
    config = type("C", (), {"domain": "consul.", "datacenter": "dc1", "bind_addr": "127.0.0.1",
                            "recursors": ["8.8.8.8", "127.0.0.1:5353", "[::1]:53"],
                            "dns_config": {"service_ttl": {"*": "5s", "db*": "10s", "Web": "1m"},
                                           "node_ttl": "30s", "udp_answer_limit": "bad",
                                           "soa": {"min_ttl": 9}}})()
    settings = DnsSettings.from_agent_config(config)
    assert settings.recursors == [("8.8.8.8", 53), ("127.0.0.1", 5353), ("::1", 53)]
    assert [settings.ttl_for_service(n) for n in ("web", "db-main", "api")] == [60, 10, 5]
    assert (settings.node_ttl, settings.udp_answer_limit, settings.soa[3]) == (30, 3, 9)
