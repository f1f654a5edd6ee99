"""The registry's DNS interface: Consul's names over UDP and TCP, answers pre-encoded per catalog index.

Why it looks the way it does:
- HAProxy's resolvers (haproxy.md §1.3) ask the same few SRV questions once per `timeout resolve`,
  from every proxy. So an answer is encoded once per (question bytes after the ID, catalog state) and
  reused: the cache is keyed on the query's wire bytes minus the ID (so the EDNS size is part of the
  key), and a hit costs one dict lookup and one `sendto`. Entries are dropped by the store's commit
  listener, only when a topic they were built from changes (service:<name>, node:<name>, ...).
- Random order per query: each entry keeps a few independently shuffled, pre-encoded permutations
  and queries rotate through them (more permutations when the answer had to be trimmed, so trimmed
  answers still spread over all instances).
- Wire form is assembled here from per-record pieces rather than by dnspython's renderer, because
  trimming must drop an SRV record together with its A/AAAA record in the additional section, and the
  renderer can only find the fitting count by re-rendering. Names are compressed only against the
  question, so pieces do not depend on their order; additional A/AAAA owners point at their SRV target.
- Deviations from Consul's defaults, on purpose (DESIGN.md): no node-meta TXT in the additional section
  (HAProxy ignores the A records after one); one A/AAAA per SRV record; TC is set whenever an answer is
  trimmed to fit the size (EDNS size, 512 bytes, or 64 KiB on TCP). Cutting to `udp_answer_limit`
  (non-EDNS UDP only) sets TC only with `enable_truncate`, as in Consul.
- Never an open resolver: names outside the domain are forwarded only with `-recursor`, else SERVFAIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from registry import dnsnames
from registry.dnsnames import Lookup
from registry.durations import DurationError, parse_duration

log = logging.getLogger("registry.dns")

QR, AA, TC, RD, RA, CD = (0x8000, int(dns.flags.AA), int(dns.flags.TC), int(dns.flags.RD), int(dns.flags.RA),
                          int(dns.flags.CD))
OPCODE_MASK = 0x7800
T = dns.rdatatype
IN, ANY_CLASS = int(dns.rdataclass.IN), int(dns.rdataclass.ANY)
NOERROR, FORMERR, SERVFAIL = 0, int(dns.rcode.FORMERR), int(dns.rcode.SERVFAIL)
NXDOMAIN = int(dns.rcode.NXDOMAIN)
NOTIMP, REFUSED, BADVERS = int(dns.rcode.NOTIMP), int(dns.rcode.REFUSED), int(dns.rcode.BADVERS)

OWNER_IS_QUESTION = b"\xc0\x0c"  # every answer record is owned by the question name, at offset 12
SRV_TARGET_AT = 18  # offset of the target inside an SRV record that starts with OWNER_IS_QUESTION
MAX_UDP = 65535 - 68
MAX_TCP = 65535
CATALOG_TOPICS = ("nodes", "services", "checks")
CATALOG_PREFIXES = ("node:", "service:")
ANY_CATALOG_CHANGE = "*"


def name_dependency(topic: str) -> str | None:
    """Store topic → our dependency key. DNS names are case-insensitive, so an answer for `web`
    depends on every service whose name folds to `web` (`service:Web` too), and an NXDOMAIN for
    `web` is dropped when such a service first appears."""
    kind, sep, name = topic.partition(":")
    return f"{kind}~{name.lower()}" if sep and kind in ("service", "node") else None


# ---------------------------------------------------------------------------------------- settings


@dataclass
class DnsSettings:
    """The agent's DNS configuration (Consul's `dns_config` block plus domain and recursors)."""

    domain: str = "consul."
    datacenter: str = "dc1"
    advertise: str = "127.0.0.1"
    recursors: list[tuple[str, int]] = field(default_factory=list)
    recursor_timeout: float = 2.0
    only_passing: bool = False
    node_ttl: int = 0
    service_ttl: dict[str, int] = field(default_factory=dict)
    udp_answer_limit: int = 3
    a_record_limit: int = 0
    enable_truncate: bool = False
    soa: tuple[int, int, int, int] = (3600, 600, 86400, 0)  # refresh, retry, expire, min_ttl

    @classmethod
    def from_agent_config(cls, config: Any) -> DnsSettings:
        dns_config = dict(config.dns_config or {})
        soa = dict(dns_config.get("soa") or {})
        return cls(
            domain=config.domain, datacenter=config.datacenter, advertise=config.bind_addr,
            recursors=[_recursor_address(r) for r in config.recursors],
            recursor_timeout=_seconds(dns_config.get("recursor_timeout", "2s")) or 2.0,
            only_passing=_boolean(dns_config.get("only_passing", False)),
            node_ttl=int(_seconds(dns_config.get("node_ttl", 0))),
            service_ttl={k.lower(): int(_seconds(v))
                         for k, v in (dns_config.get("service_ttl") or {}).items()},
            udp_answer_limit=max(1, _integer(dns_config, "udp_answer_limit", 3)),
            a_record_limit=max(0, _integer(dns_config, "a_record_limit", 0)),
            enable_truncate=_boolean(dns_config.get("enable_truncate", False)),
            soa=(_integer(soa, "refresh", 3600), _integer(soa, "retry", 600), _integer(soa, "expire", 86400),
                 _integer(soa, "min_ttl", 0)))

    def ttl_for_service(self, name: str) -> int:
        """Exact name, then the longest `prefix*` pattern, then `*` (Consul's service_ttl rules)."""
        if name in self.service_ttl:
            return self.service_ttl[name]
        best = None
        for pattern, ttl in self.service_ttl.items():
            if pattern.endswith("*") and name.startswith(pattern[:-1]) \
                    and (best is None or len(pattern) > best[0]):
                best = (len(pattern), ttl)
        return best[1] if best else 0


def _seconds(value: object) -> float:
    if isinstance(value, str) and value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, parse_duration(value))
    except DurationError:
        log.warning("dns_config: ignoring invalid duration %r", value)
        return 0.0


def _integer(section: dict, key: str, default: int) -> int:
    """A non-negative count from the config; a bad value is logged and replaced by Consul's default."""
    try:
        return max(0, int(section.get(key, default)))
    except (TypeError, ValueError):
        log.warning("dns_config: ignoring invalid %s %r", key, section.get(key))
        return default


def _boolean(value: object) -> bool:
    return value.strip().lower() in ("1", "true", "yes") if isinstance(value, str) else bool(value)


def _recursor_address(text: str) -> tuple[str, int]:
    """'8.8.8.8', '8.8.8.8:53', '[::1]:5353' → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        return host, int(port.lstrip(":") or 53)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 53


# ---------------------------------------------------------------------------------------- queries


class Malformed(Exception):
    """The packet has a DNS header but no question we can read: answer FORMERR."""


class Ignored(Exception):
    """Not a query at all (too short, or a response): drop it without a word."""


@dataclass(slots=True)
class Query:
    """One parsed query; `question` is its question section exactly as sent, echoed verbatim."""

    flags: int
    question: bytes
    labels: list[bytes]
    qtype: int
    qclass: int
    edns: tuple[int, int, int] | None = None  # (UDP payload size, version, DO bit)
    edns_options: bool = False

    def key(self, tcp: bool) -> tuple:
        """What the answer depends on: transport, opcode/RD/CD, question bytes, EDNS size/version/DO."""
        return tcp, self.flags & (OPCODE_MASK | RD | CD), self.question, self.edns


def parse_query(data: bytes) -> Query:
    """Header, one question and at most one OPT record; anything else is Malformed or Ignored."""
    if len(data) < 12:
        raise Ignored
    flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!5H", data, 2)
    if flags & QR:
        raise Ignored
    if qdcount != 1 or ancount or nscount or arcount > 1:
        raise Malformed
    labels, pos = _read_qname(data)
    if pos + 4 > len(data):
        raise Malformed
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    query = Query(flags, data[12:pos + 4], labels, qtype, qclass)
    if arcount:
        _read_opt(data, pos + 4, query)
    return query


def _read_qname(data: bytes) -> tuple[list[bytes], int]:
    labels, pos = [], 12
    while True:
        if pos >= len(data):
            raise Malformed
        length = data[pos]
        if length == 0:
            break
        if length > 63 or pos + 1 + length > len(data):
            raise Malformed  # compression pointers have no place in a question
        labels.append(data[pos + 1:pos + 1 + length])
        pos += 1 + length
    if pos + 1 - 12 > 255:
        raise Malformed
    return labels, pos + 1


def _read_opt(data: bytes, pos: int, query: Query) -> None:
    if data[pos:pos + 3] != b"\x00\x00\x29" or pos + 11 > len(data):
        raise Malformed
    size, ttl, rdlength = struct.unpack_from("!HIH", data, pos + 3)
    if pos + 11 + rdlength > len(data):
        raise Malformed
    query.edns = (size, (ttl >> 16) & 0xFF, (ttl >> 15) & 1)
    query.edns_options = rdlength > 0


def error_reply(data: bytes, rcode: int) -> bytes:
    """A bare header answer (FORMERR for unreadable packets): the ID and opcode echoed, no sections."""
    flags = int.from_bytes(data[2:4], "big") if len(data) >= 4 else 0
    return data[:2] + struct.pack("!5H", QR | (flags & (OPCODE_MASK | RD)) | rcode, 0, 0, 0, 0)


# ---------------------------------------------------------------------------------------- plans


@dataclass(slots=True)
class Item:
    """One answer record and, for SRV, the A/AAAA record that goes with it in the additional section."""

    record: bytes  # the whole answer RR, owned by the question name
    target: bytes = b""  # SRV: the target name as written at SRV_TARGET_AT (uncompressed)
    extra: bytes = b""  # SRV: type..rdata of the address record; its owner is added when placed


@dataclass
class Plan:
    """What to answer, before ordering and trimming; deps are the store topics it was built from."""

    rcode: int = NOERROR
    items: list[Item] = field(default_factory=list)
    authority: list[bytes] = field(default_factory=list)
    deps: set[str] = field(default_factory=set)
    answer_cap: int = 0  # a_record_limit for address answers (0: none)
    authoritative: bool = True
    forward: bool = False  # ask the recursors if there are any (else answer rcode)


def _rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, IN, ttl, len(rdata)) + rdata


def _address_rdata(address: str) -> tuple[int, bytes] | None:
    """(A or AAAA, packed) for an IP address; None for a host name."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return (T.A if ip.version == 4 else T.AAAA), ip.packed


def _txt_rdata(text: str) -> bytes:
    raw = text.encode()
    chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    return b"".join(bytes((len(chunk),)) + chunk for chunk in chunks)


class AnswerBuilder:
    """Turns a classified query into a Plan by reading the store (the only place that reads it)."""

    def __init__(self, store: Any, settings: DnsSettings, app: Any):
        self.store = store
        self.settings = settings
        self.app = app
        self.domain = dnsnames.split_domain(settings.domain)
        self.domain_text = ".".join(label.decode() for label in self.domain)
        self.dc = settings.datacenter.lower()

    # ACL hook (issue 8): an optional app["acl"] object decides what the anonymous token may see.
    def allows_service(self, name: str) -> bool:
        acl = self.app.get("acl") if self.app is not None else None
        return acl is None or acl.dns_allows_service(name)

    def allows_node(self, name: str) -> bool:
        acl = self.app.get("acl") if self.app is not None else None
        return acl is None or acl.dns_allows_node(name)

    def plan(self, query: Query, lookup: Lookup) -> Plan:
        suffixes = dnsnames.question_suffixes(query.labels)
        if lookup.kind == dnsnames.OUTSIDE:
            return Plan(SERVFAIL, authoritative=False, forward=True)
        if lookup.kind == dnsnames.PTR:
            return self._ptr(query, lookup, suffixes)
        if query.qtype == T.SOA:  # as Consul: the domain's SOA answers for any name in it
            return Plan(items=[Item(self._soa(suffixes))])
        if query.qtype == T.NS:
            apex = dnsnames.encode_compressed(list(self.domain), suffixes)
            return Plan(items=[Item(_rr(apex, T.NS, self.settings.node_ttl,
                                        dnsnames.encode_compressed(self._ns_labels(), suffixes)))])
        builder = {dnsnames.SERVICE: self._service, dnsnames.NODE: self._node, dnsnames.ADDR: self._addr}.get(
            lookup.kind)
        if builder is None:  # the apex, or a name of ours that means nothing
            rcode = NOERROR if lookup.kind == dnsnames.APEX else NXDOMAIN
            return self._negative(Plan(rcode), suffixes)
        plan = builder(query, lookup, suffixes)
        return plan if plan.items else self._negative(plan, suffixes)

    # -------------------------------------------------------------------- negative answers, SOA

    def _ns_labels(self) -> list[bytes]:
        return [b"ns", *self.domain]

    def _soa(self, suffixes: dict) -> bytes:
        refresh, retry, expire, min_ttl = self.settings.soa
        rdata = (dnsnames.encode_compressed(self._ns_labels(), suffixes)
                 + dnsnames.encode_compressed([b"hostmaster", *self.domain], suffixes)
                 + struct.pack("!5I", int(time.time()) & 0xFFFFFFFF, refresh, retry, expire, min_ttl))
        owner = dnsnames.encode_compressed(list(self.domain), suffixes)
        return _rr(owner, T.SOA, min_ttl, rdata)

    def _negative(self, plan: Plan, suffixes: dict) -> Plan:
        """NXDOMAIN or NODATA: no answers, the SOA in authority (RFC 2308)."""
        plan.items = []
        plan.authority = [self._soa(suffixes)]
        return plan

    # -------------------------------------------------------------------- services

    def _service(self, query: Query, lookup: Lookup, suffixes: dict) -> Plan:
        names = {svc["Service"] for svc in self.store.services.values()
                 if svc["Service"].lower() == lookup.name}
        plan = Plan(deps={f"service~{lookup.name}"})
        healthy = self._healthy({name for name in names if self.allows_service(name)}, lookup.tag)
        if not healthy:
            plan.rcode = NXDOMAIN
            return plan
        ttl = self.settings.ttl_for_service(lookup.name)
        if query.qtype == T.SRV:
            plan.items = self._srv_items(healthy, ttl)
        elif query.qtype in (T.A, T.AAAA, T.ANY):
            addresses = dict.fromkeys(svc["Address"] or node["Address"] for node, svc, _ in healthy)
            plan.items = self._address_items(list(addresses), query.qtype, ttl, suffixes)
            plan.answer_cap = self.settings.a_record_limit
        return plan

    def _healthy(self, names: set[str], tag: str | None) -> list[tuple[dict, dict, str]]:
        """Instances that pass the tag and health filters (critical never; warning unless only_passing)."""
        result = []
        for name in sorted(names):
            for node, svc, checks in self.store.instances(name):
                if tag is not None and tag not in (t.lower() for t in svc.get("Tags") or ()):
                    continue
                status = self.store.aggregated_status(checks)
                if status in ("critical", "maintenance") \
                        or (status == "warning" and self.settings.only_passing):
                    continue
                result.append((node, svc, status))
        return result

    def _srv_items(self, healthy: list[tuple[dict, dict, str]], ttl: int) -> list[Item]:
        items, seen = [], set()
        for node, svc, status in healthy:
            address = svc["Address"] or node["Address"]
            if (node["Node"], address, svc["Port"]) in seen:
                continue
            seen.add((node["Node"], address, svc["Port"]))
            weights = svc.get("Weights") or {}
            weight = weights.get("Warning" if status == "warning" else "Passing", 1)
            placed = self._srv_target(node, svc, ttl)
            if placed is None:
                continue
            target, extra = placed
            rdata = struct.pack("!HHH", 1, min(max(int(weight), 0), 65535), svc["Port"] & 0xFFFF) + target
            items.append(Item(_rr(OWNER_IS_QUESTION, T.SRV, ttl, rdata), target, extra))
        return items

    def _srv_target(self, node: dict, svc: dict, ttl: int) -> tuple[bytes, bytes] | None:
        """`<node>.node.<dc>.<domain>` when the instance uses its node's address, `<hex>.addr...` when it
        has its own IP, the host name itself otherwise (then no address record: the client resolves it)."""
        address = svc["Address"] or node["Address"]
        rdata = _address_rdata(address)
        if rdata is None:
            with contextlib.suppress(ValueError):
                return dnsnames.encode_plain(dnsnames.name_labels(address)), b""
            return None  # not even a host name: nothing a client could use
        labels = None
        if not svc["Address"]:
            with contextlib.suppress(ValueError):
                labels = dnsnames.name_labels(f"{node['Node']}.node.{self.dc}.{self.domain_text}")
        if labels is None:
            labels = [dnsnames.ip_to_hex(address).encode(), b"addr", self.dc.encode(), *self.domain]
        rtype, packed = rdata
        return dnsnames.encode_plain(labels), struct.pack("!HHIH", rtype, IN, ttl, len(packed)) + packed

    def _address_items(self, addresses: list[str], qtype: int, ttl: int, suffixes: dict) -> list[Item]:
        """A/AAAA (ANY: both) per address; a host name becomes a CNAME."""
        items = []
        for address in addresses:
            rdata = _address_rdata(address)
            if rdata is None:
                with contextlib.suppress(ValueError):
                    target = dnsnames.encode_compressed(dnsnames.name_labels(address), suffixes)
                    items.append(Item(_rr(OWNER_IS_QUESTION, T.CNAME, ttl, target)))
            elif qtype in (rdata[0], T.ANY):
                items.append(Item(_rr(OWNER_IS_QUESTION, rdata[0], ttl, rdata[1])))
        return items

    # -------------------------------------------------------------------- nodes, addr, PTR

    def _node(self, query: Query, lookup: Lookup, suffixes: dict) -> Plan:
        matches = [n for n in self.store.nodes.values() if n["Node"].lower() == lookup.name]
        plan = Plan(deps={f"node~{lookup.name}"})
        if not matches or not self.allows_node(matches[0]["Node"]):
            plan.rcode = NXDOMAIN
            return plan
        node, ttl = matches[0], self.settings.node_ttl
        if query.qtype in (T.A, T.AAAA, T.ANY):
            plan.items = self._address_items([node["Address"]], query.qtype, ttl, suffixes)
        if query.qtype in (T.TXT, T.ANY):
            plan.items += [Item(_rr(OWNER_IS_QUESTION, T.TXT, ttl, _txt_rdata(text)))
                           for text in _meta_texts(node.get("Meta") or {})]
        return plan

    def _addr(self, query: Query, lookup: Lookup, suffixes: dict) -> Plan:
        if not lookup.address:
            return Plan(NXDOMAIN)
        ttl = self.settings.node_ttl
        return Plan(items=self._address_items([lookup.address], query.qtype, ttl, suffixes))

    def _ptr(self, query: Query, lookup: Lookup, suffixes: dict) -> Plan:
        """Nodes (and instances with their own address) at that IP; unknown IPs go to the recursors."""
        names = [f"{n['Node']}.node.{self.dc}.{self.domain_text}" for n in self.store.nodes.values()
                 if lookup.address and _canonical(n["Address"]) == lookup.address
                 and self.allows_node(n["Node"])]
        names += sorted({f"{s['Service']}.service.{self.dc}.{self.domain_text}"
                         for s in self.store.services.values()
                         if lookup.address and s["Address"] and _canonical(s["Address"]) == lookup.address
                         and self.allows_service(s["Service"])})
        if not names:
            return self._negative(Plan(NXDOMAIN, deps={ANY_CATALOG_CHANGE}, forward=True), suffixes)
        plan = Plan(deps={ANY_CATALOG_CHANGE})
        if query.qtype in (T.PTR, T.ANY):
            for name in names:
                with contextlib.suppress(ValueError):
                    target = dnsnames.encode_compressed(dnsnames.name_labels(name), suffixes)
                    plan.items.append(Item(_rr(OWNER_IS_QUESTION, T.PTR, self.settings.node_ttl, target)))
        return plan if plan.items else self._negative(plan, suffixes)


def _canonical(address: str) -> str:
    """An IP address in the form ipaddress prints (so `fd00:0::5` matches `fd00::5`); else as given."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def _meta_texts(meta: dict) -> list[str]:
    """Node meta as TXT strings: `k=v` (RFC 1464); keys prefixed `rfc1035-` give the bare value."""
    return [value if key.startswith("rfc1035-") else f"{key}={value}" for key, value in sorted(meta.items())]


# ---------------------------------------------------------------------------------------- encoding


class Answer:
    """A cached answer: every pre-encoded permutation, each the whole message after the 2-byte ID."""

    __slots__ = ("bodies", "valid", "key", "deps")

    def __init__(self, bodies: list[bytes], key: tuple, deps: set[str]):
        self.bodies = bodies
        self.valid = True
        self.key = key
        self.deps = deps


@dataclass
class Limits:
    """How big an answer may be for this query and transport."""

    size: int
    answers: int = 0  # 0: no count limit
    cut_sets_tc: bool = False  # does hitting `answers` set TC (non-EDNS UDP: only with enable_truncate)

    @classmethod
    def for_query(cls, query: Query, tcp: bool, settings: DnsSettings) -> Limits:
        if tcp:
            return cls(MAX_TCP)
        if query.edns is not None:
            return cls(max(512, min(query.edns[0], MAX_UDP)))
        return cls(512, min(8, settings.udp_answer_limit), settings.enable_truncate)


def response_flags(query: Query, plan: Plan, recursion: bool) -> int:
    return (QR | (query.flags & (OPCODE_MASK | RD | CD)) | (AA if plan.authoritative else 0)
            | (RA if recursion else 0) | (plan.rcode & 0xF))


def opt_record(query: Query, rcode: int) -> bytes:
    """Our OPT RR (last in additional): the client's payload size echoed, extended rcode, DO echoed."""
    if query.edns is None:
        return b""
    size, _version, do = query.edns
    ttl = ((rcode >> 4) << 24) | (do << 15)
    return b"\x00" + struct.pack("!HHIH", T.OPT, max(512, min(size, MAX_UDP)), ttl, 0)


def assemble(query: Query, plan: Plan, items: list[Item], limits: Limits, flags: int,
             opt: bytes) -> tuple[bytes, int]:
    """One message body (everything after the ID) with as many items as fit; returns it and that count."""
    authority = b"".join(plan.authority)
    size = 12 + len(query.question) + len(authority) + len(opt)
    offset = 12 + len(query.question)
    wanted = min(plan.answer_cap or len(items), len(items))  # a_record_limit is a choice, never TC
    cap = min(limits.answers or wanted, wanted)
    answers: list[bytes] = []
    extras: list[bytes] = []
    truncated = False
    for item in items[:cap]:
        extra = b""
        if item.extra:
            at = offset + SRV_TARGET_AT
            extra = ((0xC000 | at).to_bytes(2, "big") if at < 0x4000 else item.target) + item.extra
        if size + len(item.record) + len(extra) > limits.size:
            truncated = True
            break
        answers.append(item.record)
        if extra:
            extras.append(extra)
        size += len(item.record) + len(extra)
        offset += len(item.record)
    if truncated or (cap < wanted and limits.cut_sets_tc):
        flags |= TC
    header = struct.pack("!5H", flags, 1, len(answers), len(plan.authority), len(extras) + (1 if opt else 0))
    return b"".join([header, query.question, *answers, authority, *extras, opt]), len(answers)


def encode(query: Query, plan: Plan, limits: Limits, recursion: bool) -> list[bytes]:
    """The permutations to rotate through: one if order cannot vary, else 8 shuffles (more if trimmed)."""
    flags = response_flags(query, plan, recursion)
    opt = opt_record(query, plan.rcode)
    items = list(plan.items)
    if len(items) < 2:
        return [assemble(query, plan, items, limits, flags, opt)[0]]
    random.shuffle(items)
    first, fitted = assemble(query, plan, items, limits, flags, opt)
    count = 8 if fitted >= len(items) else min(64, max(8, 2 * math.ceil(len(items) / max(fitted, 1))))
    bodies = [first]
    for _ in range(count - 1):
        random.shuffle(items)
        bodies.append(assemble(query, plan, items, limits, flags, opt)[0])
    return bodies


# ---------------------------------------------------------------------------------------- cache


class AnswerCache:
    """Answers by canonical key, plus wire-byte aliases for the one-lookup hit path; bounded, FIFO eviction.

    Invalidation follows the store's topics: an entry lists what it was built from (`service~<name>`,
    `node~<name>`, or "*" for any catalog change) and is dropped by the first commit that touches it;
    an "acl" topic drops everything (visibility may have changed anywhere).
    """

    def __init__(self, limit: int = 10_000):
        self.limit = limit
        self.by_key: dict[tuple, Answer] = {}
        self.udp_wire: dict[bytes, Answer] = {}
        self.tcp_wire: dict[bytes, Answer] = {}
        self.deps: dict[str, set[tuple]] = {}

    def get(self, key: tuple) -> Answer | None:
        return self.by_key.get(key)

    def put(self, answer: Answer) -> None:
        if len(self.by_key) >= self.limit:
            self._drop(next(iter(self.by_key)))
        self.by_key[answer.key] = answer
        for topic in answer.deps:
            self.deps.setdefault(topic, set()).add(answer.key)

    def alias(self, tcp: bool, wire: bytes, answer: Answer) -> None:
        table = self.tcp_wire if tcp else self.udp_wire
        if len(table) >= self.limit:
            del table[next(iter(table))]
        table[wire] = answer

    def _drop(self, key: tuple) -> None:
        answer = self.by_key.pop(key, None)
        if answer is None:
            return
        answer.valid = False
        for topic in answer.deps:
            keys = self.deps.get(topic)
            if keys is not None:
                keys.discard(key)

    def invalidate(self, topics: set[str]) -> None:
        if any(topic.startswith("acl") for topic in topics):
            self.clear()
            return
        touched = {dep for dep in map(name_dependency, topics) if dep}
        if touched or any(t in CATALOG_TOPICS or t.startswith(CATALOG_PREFIXES) for t in topics):
            touched.add(ANY_CATALOG_CHANGE)
        for dep in touched:
            for key in self.deps.pop(dep, ()):
                self._drop(key)

    def clear(self) -> None:
        for answer in self.by_key.values():
            answer.valid = False
        self.by_key.clear()
        self.udp_wire.clear()
        self.tcp_wire.clear()
        self.deps.clear()


# ---------------------------------------------------------------------------------------- recursors


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self, future: asyncio.Future, query_id: bytes):
        self.future = future
        self.query_id = query_id

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[:2] == self.query_id and len(data) >= 12 and data[2] & 0x80 and not self.future.done():
            self.future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Forwarder:
    """Relays queries for names outside the domain to the configured recursors, in order."""

    MAX_PENDING = 256

    def __init__(self, recursors: list[tuple[str, int]], timeout: float):
        self.recursors = recursors
        self.timeout = timeout
        self.tasks: set[asyncio.Task] = set()

    def forward(self, data: bytes, tcp: bool, reply: Callable[[bytes], None]) -> None:
        if len(self.tasks) >= self.MAX_PENDING:
            reply(error_reply(data, SERVFAIL))
            return
        task = asyncio.get_running_loop().create_task(self._relay(data, tcp, reply))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _relay(self, data: bytes, tcp: bool, reply: Callable[[bytes], None]) -> None:
        upstream_id = os.urandom(2)
        query = upstream_id + data[2:]
        for host, port in self.recursors:
            try:
                answer = await asyncio.wait_for(self._ask(query, host, port, tcp), self.timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
                log.debug("recursor %s:%d failed: %r", host, port, exc)
                continue
            if len(answer) < 12:
                continue
            reply(data[:2] + answer[2:3] + bytes((answer[3] | RA,)) + answer[4:])  # we did recurse
            return
        reply(error_reply(data, SERVFAIL))

    async def _ask(self, query: bytes, host: str, port: int, tcp: bool) -> bytes:
        if not tcp:
            answer = await self._ask_udp(query, host, port)
            if not answer[2] & (TC >> 8):
                return answer
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(len(query).to_bytes(2, "big") + query)
            length = int.from_bytes(await reader.readexactly(2), "big")
            return await reader.readexactly(length)
        finally:
            writer.close()

    async def _ask_udp(self, query: bytes, host: str, port: int) -> bytes:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(lambda: _OneShot(future, query[:2]),
                                                           remote_addr=(host, port))
        try:
            transport.sendto(query)
            return await future
        finally:
            transport.close()

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------- server


class DnsServer:
    """UDP + TCP listeners on client_addr:dns_port sharing one answer cache."""

    def __init__(self, store: Any, settings: DnsSettings, app: Any = None, host: str = "127.0.0.1",
                 port: int = 8600):
        self.store = store
        self.settings = settings
        self.host, self.port = host, port
        self.builder = AnswerBuilder(store, settings, app)
        self.cache = AnswerCache()
        self.forwarder = Forwarder(settings.recursors, settings.recursor_timeout)
        self.recursion = bool(settings.recursors)
        self.udp: _UdpListener | None = None
        self.tcp: asyncio.AbstractServer | None = None
        self.tcp_connections: set[_TcpProtocol] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.udp = _UdpListener(self, sock)
        self.tcp = await loop.create_server(lambda: _TcpProtocol(self), self.host, self.port,
                                            reuse_address=True)
        self.store.commit_listeners.append(self.on_commit)

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.store.commit_listeners.remove(self.on_commit)
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
            for conn in list(self.tcp_connections):
                conn.close()
            await self.tcp.wait_closed()
        await self.forwarder.stop()

    def on_commit(self, txn: Any) -> None:
        self.cache.invalidate(txn.topics)

    def answer(self, data: bytes, tcp: bool, reply: Callable[[bytes], None]) -> None:
        """The slow path (cache miss): parse, plan, encode, cache; forward or error when it must."""
        try:
            query = parse_query(data)
        except Ignored:
            return
        except Malformed:
            reply(error_reply(data, FORMERR))
            return
        key = query.key(tcp)
        cached = self.cache.get(key)
        if cached is None:
            plan = self._plan(query)
            if plan.forward and self.recursion:
                self.forwarder.forward(data, tcp, reply)
                return
            bodies = encode(query, plan, Limits.for_query(query, tcp, self.settings), self.recursion)
            cached = Answer(bodies, key, plan.deps)
            self.cache.put(cached)
        if not query.edns_options:  # EDNS options (cookies) make every query unique: no alias
            self.cache.alias(tcp, data[2:], cached)
        reply(data[:2] + cached.bodies[random.randrange(len(cached.bodies))])

    def _plan(self, query: Query) -> Plan:
        if query.flags & OPCODE_MASK:
            return Plan(NOTIMP, authoritative=False)
        if query.edns is not None and query.edns[1] != 0:
            return Plan(BADVERS, authoritative=False)
        if query.qclass not in (IN, ANY_CLASS):
            return Plan(REFUSED, authoritative=False)
        if query.qtype in (T.AXFR, T.IXFR):
            return Plan(NOTIMP, authoritative=False)
        lookup = dnsnames.classify([label.lower() for label in query.labels], self.builder.domain,
                                   self.settings.datacenter)
        return self.builder.plan(query, lookup)


class _UdpListener:
    """The UDP socket, read straight from the event loop's selector.

    Why not a DatagramProtocol: asyncio reads one datagram per loop iteration into a fresh 256 KiB
    buffer; draining the socket in one callback roughly doubles the rate a benchmark reaches. The hit
    path is one dict lookup on the bytes after the ID, a rotation through the permutations, one sendto.
    A reply the kernel will not take right now is dropped, as any UDP datagram may be (clients retry).
    """

    BATCH = 256  # datagrams per callback, so TCP clients and HTTP get their turn under a flood
    MAX_QUERY = 4096  # larger datagrams arrive cut short and get FORMERR

    def __init__(self, server: DnsServer, sock: socket.socket):
        self.server = server
        self.sock = sock
        self.wire = server.cache.udp_wire
        self.turn = 0
        self.loop = asyncio.get_running_loop()
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._drain)

    def _drain(self) -> None:
        recv, send, wire = self.sock.recvfrom, self.sock.sendto, self.wire
        for _ in range(self.BATCH):
            try:
                data, addr = recv(self.MAX_QUERY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("UDP receive error: %r", exc)
                continue
            answer = wire.get(data[2:])
            if answer is not None and answer.valid:
                bodies = answer.bodies
                self.turn += 1
                try:
                    send(data[:2] + bodies[self.turn % len(bodies)], addr)
                except OSError:
                    pass
                continue
            self._slow(data, addr)

    def _slow(self, data: bytes, addr: Any) -> None:
        try:
            self.server.answer(data, False, lambda out: self.send(out, addr))
        except Exception:  # noqa: BLE001 - one bad packet must not stop the server
            log.exception("DNS query failed")
            self.send(error_reply(data, SERVFAIL), addr)

    def send(self, out: bytes, addr: Any) -> None:
        if self.sock.fileno() >= 0 and len(out) >= 12:
            with contextlib.suppress(OSError):
                self.sock.sendto(out, addr)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class _TcpProtocol(asyncio.Protocol):
    """Length-prefixed messages, any number pipelined on one connection; idle connections close."""

    IDLE = 30.0
    MAX_CONNECTIONS = 512

    def __init__(self, server: DnsServer):
        self.server = server
        self.wire = server.cache.tcp_wire
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.turn = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server.tcp_connections) >= self.MAX_CONNECTIONS:
            transport.close()
            return
        self.server.tcp_connections.add(self)
        self._arm_idle()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(self.IDLE, self.close)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        """A client that sends but does not read gets no more of our reading until it catches up."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.tcp_connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._arm_idle()
        while len(self.buffer) >= 2:
            length = int.from_bytes(self.buffer[:2], "big")
            if len(self.buffer) < 2 + length:
                break
            message = bytes(self.buffer[2:2 + length])
            del self.buffer[:2 + length]
            self._message(message)

    def _message(self, message: bytes) -> None:
        answer = self.wire.get(message[2:])
        if answer is not None and answer.valid:
            self.turn += 1
            self._send(message[:2] + answer.bodies[self.turn % len(answer.bodies)])
            return
        try:
            self.server.answer(message, True, self._send)
        except Exception:  # noqa: BLE001 - one bad message must not stop the server
            log.exception("DNS query failed")
            self._send(error_reply(message, SERVFAIL))

    def _send(self, out: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing() and len(out) >= 12:
            self.transport.write(len(out).to_bytes(2, "big") + out)


async def start_dns(agent: Any, app: Any) -> DnsServer | None:
    """Called by the agent at start; a negative -dns-port disables DNS (as in Consul)."""
    config = agent.config
    if config.dns_port < 0:
        return None
    server = DnsServer(agent.store, DnsSettings.from_agent_config(config), app, config.client_addr,
                       config.dns_port)
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot listen for DNS on %s:%d: %s", config.client_addr, config.dns_port, exc.strerror)
        await server.stop()
        raise
    app["dns"] = server
    return server
