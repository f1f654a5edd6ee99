"""DNS messages on the wire: header bits, query parsing and bare error replies.

Kept apart because it is pure (no store, no sockets) and both the server (to read what arrived) and
the answer builder (to echo the question and the header bits) need it. We parse by hand rather than
with dnspython's `from_wire` because the server keys its cache on the question bytes as sent and
must tell an unreadable packet (FORMERR) from one that is not a query at all (dropped silently).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.flags
import dns.rcode
import dns.rdataclass
import dns.rdatatype

QR, AA, TC, RD, RA, CD = (0x8000, int(dns.flags.AA), int(dns.flags.TC), int(dns.flags.RD), int(dns.flags.RA),
                          int(dns.flags.CD))
OPCODE_MASK = 0x7800
T = dns.rdatatype
IN, ANY_CLASS = int(dns.rdataclass.IN), int(dns.rdataclass.ANY)
NOERROR, FORMERR, SERVFAIL = 0, int(dns.rcode.FORMERR), int(dns.rcode.SERVFAIL)
NXDOMAIN = int(dns.rcode.NXDOMAIN)
NOTIMP, REFUSED, BADVERS = int(dns.rcode.NOTIMP), int(dns.rcode.REFUSED), int(dns.rcode.BADVERS)

MAX_UDP = 65535 - 68
MAX_TCP = 65535


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

