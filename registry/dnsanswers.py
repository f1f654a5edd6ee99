"""Catalog → DNS answers: what to answer (a Plan), the pre-encoded messages, and the cache that keeps them.

Why it looks the way it does:
- HAProxy's resolvers (haproxy.md §1.3) ask the same few SRV questions once per `timeout resolve`,
  from every proxy. So an answer is encoded once per (question bytes after the ID, catalog state) and
  reused: the cache is keyed on the query's wire bytes minus the ID (so the EDNS size is part of the
  key). Entries are dropped by the store's commit listener, only when a topic they were built from
  changes (service:<name>, node:<name>, ...).
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
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from registry import dnsnames
from registry.dnsnames import Lookup
from registry.dnssettings import DnsSettings
from registry.dnswire import (
    AA,
    ANY_CLASS,
    BADVERS,
    CD,
    IN,
    MAX_TCP,
    MAX_UDP,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    OPCODE_MASK,
    QR,
    RA,
    RD,
    REFUSED,
    SERVFAIL,
    TC,
    Query,
    T,
)

OWNER_IS_QUESTION = b"\xc0\x0c"  # every answer record is owned by the question name, at offset 12
SRV_TARGET_AT = 18  # offset of the target inside an SRV record that starts with OWNER_IS_QUESTION

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

    def plan_query(self, query: Query) -> Plan:
        """Refuse what we do not serve (other opcodes, EDNS versions, classes, zone transfers), else
        classify the name and plan its answer."""
        if query.flags & OPCODE_MASK:
            return Plan(NOTIMP, authoritative=False)
        if query.edns is not None and query.edns[1] != 0:
            return Plan(BADVERS, authoritative=False)
        if query.qclass not in (IN, ANY_CLASS):
            return Plan(REFUSED, authoritative=False)
        if query.qtype in (T.AXFR, T.IXFR):
            return Plan(NOTIMP, authoritative=False)
        lookup = dnsnames.classify([label.lower() for label in query.labels], self.domain,
                                   self.settings.datacenter)
        return self.plan(query, lookup)

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

CATALOG_TOPICS = ("nodes", "services", "checks")
CATALOG_PREFIXES = ("node:", "service:")
ANY_CATALOG_CHANGE = "*"


def name_dependency(topic: str) -> str | None:
    """Store topic → our dependency key. DNS names are case-insensitive, so an answer for `web`
    depends on every service whose name folds to `web` (`service:Web` too), and an NXDOMAIN for
    `web` is dropped when such a service first appears."""
    kind, sep, name = topic.partition(":")
    return f"{kind}~{name.lower()}" if sep and kind in ("service", "node") else None


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

