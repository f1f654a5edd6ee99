"""DNS names ↔ catalog lookups: what a query name asks for, and how our names go on the wire.

Kept apart from the server because it is pure (no store, no sockets) and is where Consul's naming
rules live (consul-api.md §9):

    [<tag>.]<service>.service[.<dc>[.dc]].<domain>
    _<service>._<tag|tcp>[.service][.<dc>[.dc]].<domain>      (RFC 2782; `_tcp` = no tag filter)
    <node>.node[.<dc>[.dc]].<domain>
    <hex-ip>.addr[.<dc>[.dc]].<domain>
    <reversed-ip>.in-addr.arpa / <nibbles>.ip6.arpa           (PTR)

Labels arrive as wire bytes, already lower-cased (ASCII only, as DNS compares names).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

#: Lookup kinds.
SERVICE, NODE, ADDR, PTR = "service", "node", "addr", "ptr"
APEX, INVALID, OUTSIDE = "apex", "invalid", "outside"

#: Kind labels Consul knows; the ones we do not serve (prepared queries, mesh) answer NXDOMAIN.
_KIND_LABELS = {b"service": SERVICE, b"node": NODE, b"addr": ADDR, b"query": INVALID, b"connect": INVALID,
                b"ingress": INVALID, b"virtual": INVALID}
_IN_ADDR = (b"in-addr", b"arpa")
_IP6 = (b"ip6", b"arpa")


@dataclass(frozen=True)
class Lookup:
    """What a query name asks the catalog for."""

    kind: str
    name: str = ""  # service or node name, lower case
    tag: str | None = None  # service tag filter
    address: str = ""  # addr and PTR lookups: the IP address asked about


def split_domain(domain: str) -> tuple[bytes, ...]:
    """'consul.' → (b'consul',): the configured domain as lower-case wire labels."""
    return tuple(label.encode().lower() for label in domain.strip(".").split(".") if label)


def classify(labels: Sequence[bytes], domain: tuple[bytes, ...], datacenter: str) -> Lookup:
    """The lookup a (lower-cased) query name asks for."""
    labels = tuple(labels)
    if labels[-2:] in (_IN_ADDR, _IP6):
        return _reverse(labels)
    if len(labels) < len(domain) or labels[len(labels) - len(domain):] != domain:
        return Lookup(OUTSIDE)
    rest = labels[:len(labels) - len(domain)]
    if not rest:
        return Lookup(APEX)
    try:
        text = [label.decode() for label in rest]
    except UnicodeDecodeError:
        return Lookup(INVALID)
    return _in_domain(text, datacenter.lower())


def _in_domain(rest: list[str], datacenter: str) -> Lookup:
    """Scan from the right for the kind label; what follows it may only name our datacenter."""
    for i in range(len(rest) - 1, -1, -1):
        kind = _KIND_LABELS.get(rest[i].encode())
        if kind is None and rest[i].startswith("_") and i == 1 and rest[0].startswith("_"):
            kind, parts, suffix = SERVICE, rest[:2], rest[2:]  # RFC 2782 without the `service` label
        elif kind is None:
            continue
        else:
            parts, suffix = rest[:i], rest[i + 1:]
        if not _our_datacenter(suffix, datacenter) or not parts:
            return Lookup(INVALID)
        return _lookup(kind, parts)
    return Lookup(INVALID)


def _our_datacenter(suffix: list[str], datacenter: str) -> bool:
    """`[.<dc>[.dc]]`: nothing, our datacenter, or our datacenter followed by the literal `dc`."""
    if not suffix:
        return True
    return suffix[0] == datacenter and (len(suffix) == 1 or (len(suffix) == 2 and suffix[1] == "dc"))


def _lookup(kind: str, parts: list[str]) -> Lookup:
    if kind == SERVICE:
        return _service(parts)
    if kind == NODE:
        return Lookup(NODE, name=".".join(parts))
    if kind == ADDR and len(parts) == 1:
        return Lookup(ADDR, address=hex_to_ip(parts[0]))
    return Lookup(INVALID)


def _service(parts: list[str]) -> Lookup:
    if len(parts) == 2 and parts[0].startswith("_") and parts[1].startswith("_"):
        tag = parts[1][1:]
        return Lookup(SERVICE, name=parts[0][1:], tag=None if tag == "tcp" else tag)
    return Lookup(SERVICE, name=parts[-1], tag=".".join(parts[:-1]) or None)


def hex_to_ip(text: str) -> str:
    """'7f000001' → '127.0.0.1'; 32 hex digits → IPv6; anything else → '' (invalid)."""
    if len(text) not in (8, 32):
        return ""
    try:
        packed = bytes.fromhex(text)
    except ValueError:
        return ""
    return str(ipaddress.ip_address(packed))


def ip_to_hex(address: str) -> str:
    """The `<hex>.addr` label Consul uses as SRV target for instances with their own address."""
    return ipaddress.ip_address(address).packed.hex()


def _reverse(labels: tuple[bytes, ...]) -> Lookup:
    """PTR names: in-addr.arpa takes 4 decimal labels, ip6.arpa 32 nibbles (anything else: invalid)."""
    body = labels[:-2]
    try:
        if labels[-2] == b"in-addr" and len(body) == 4:
            dotted = ".".join(b.decode() for b in reversed(body))
            return Lookup(PTR, address=str(ipaddress.IPv4Address(dotted)))
        if labels[-2] == b"ip6" and len(body) == 32 and all(len(b) == 1 for b in body):
            packed = bytes.fromhex(b"".join(reversed(body)).decode())
            return Lookup(PTR, address=str(ipaddress.IPv6Address(packed)))
    except (ValueError, UnicodeDecodeError):
        pass
    return Lookup(PTR)


# ---------------------------------------------------------------------------------------- wire form


def name_labels(name: str) -> list[bytes]:
    """A dotted name as wire labels; raises ValueError when a label cannot go on the wire."""
    labels = [label.encode() for label in name.strip(".").split(".") if label]
    if any(len(label) > 63 for label in labels) or sum(len(label) + 1 for label in labels) + 1 > 255:
        raise ValueError(f"{name!r} is not a valid DNS name")
    return labels


def encode_plain(labels: Sequence[bytes]) -> bytes:
    """A name with no compression (SRV targets must not be compressed, RFC 2782)."""
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def question_suffixes(labels: Sequence[bytes], start: int = 12) -> dict[tuple[bytes, ...], int]:
    """Offsets of every suffix of the question name, keyed lower case: targets for compression pointers."""
    offsets: dict[tuple[bytes, ...], int] = {}
    pos = start
    lowered = [label.lower() for label in labels]
    for i, label in enumerate(labels):
        offsets.setdefault(tuple(lowered[i:]), pos)
        pos += 1 + len(label)
    return offsets


def encode_compressed(labels: Sequence[bytes], suffixes: dict[tuple[bytes, ...], int]) -> bytes:
    """A name compressed only against the question, so the result does not depend on record order."""
    lowered = [label.lower() for label in labels]
    out = b""
    for i, label in enumerate(labels):
        offset = suffixes.get(tuple(lowered[i:]))
        if offset is not None:
            return out + (0xC000 | offset).to_bytes(2, "big")
        out += bytes((len(label),)) + label
    return out + b"\x00"
