"""A fuzz pass against the running DNS server: random and mutated packets over UDP and TCP.

Afterwards (and in between) valid queries must still get correct answers, and the agent must not
have hit its last-resort error handler (that would be a bug, even if the server survived it).
"""

from __future__ import annotations

import random
import socket

import dns.edns
import dns.message
import dns.rcode
import pytest
import requests

from tests.procs import AgentProcess

SEED = 4242
ROUNDS = 3000


def base_queries() -> list[bytes]:
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)
    return [q.to_wire() for q in (
        dns.message.make_query("web.service.consul", "SRV"),
        dns.message.make_query("_web._tcp.service.consul", "SRV", use_edns=0, payload=1232),
        dns.message.make_query("web.service.consul", "A", use_edns=0, options=[cookie]),
        dns.message.make_query("node1.node.dc1.consul", "ANY"),
        dns.message.make_query("1.0.0.127.in-addr.arpa", "PTR"),
        dns.message.make_query("7f000001.addr.dc1.consul", "A"),
        dns.message.make_query("example.com", "A"),
    )]


def mutate(rng: random.Random, wire: bytes) -> bytes:
    data = bytearray(wire)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        data = data[:rng.randrange(len(data))]
    elif kind == 2:
        data += rng.randbytes(rng.randint(1, 64))
    elif kind == 3:
        data[4:12] = rng.randbytes(8)  # counts
    else:
        pos = rng.randrange(12, len(data))
        data[pos:pos] = rng.randbytes(rng.randint(1, 8))
    return bytes(data)


def valid_answer(port: int, tcp: bool) -> bool:
    query = dns.message.make_query("web.service.consul", "SRV", use_edns=0, payload=4096)
    wire = query.to_wire()
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(len(wire).to_bytes(2, "big") + wire)
            data = b""
            while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
                chunk = sock.recv(65536)
                assert chunk, "connection closed"
                data += chunk
            reply = dns.message.from_wire(data[2:])
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.sendto(wire, ("127.0.0.1", port))
            while True:  # skip late answers to fuzz packets sent from other sockets (none should arrive)
                data = sock.recv(65535)
                if data[:2] == wire[:2]:
                    break
            reply = dns.message.from_wire(data)
    return reply.rcode() == dns.rcode.NOERROR and sorted(rr.port for rr in reply.answer[0]) == [9001, 9002]


@pytest.fixture
def web_agent(dev_agent: AgentProcess) -> AgentProcess:
    for port in (9001, 9002):
        resp = requests.put(dev_agent.url + "/v1/agent/service/register", timeout=5,
                            json={"ID": f"web{port}", "Name": "web", "Address": "127.0.0.1", "Port": port})
        assert resp.status_code == 200
    return dev_agent


def test_fuzz_keeps_server_answering(web_agent: AgentProcess) -> None:
    rng = random.Random(SEED)
    port = web_agent.dns_port
    bases = base_queries()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.setblocking(False)
        for i in range(ROUNDS):
            packet = rng.randbytes(rng.randrange(0, 600)) if i % 3 == 0 else mutate(rng, rng.choice(bases))
            udp.sendto(packet, ("127.0.0.1", port))
            if i % 500 == 0:
                assert valid_answer(port, tcp=False), f"no valid answer after {i} fuzz packets (seed {SEED})"
    for _ in range(40):
        with socket.create_connection(("127.0.0.1", port), timeout=3) as tcp:
            stream = b""
            for _ in range(rng.randint(1, 6)):
                body = (mutate(rng, rng.choice(bases)) if rng.random() < 0.7
                        else rng.randbytes(rng.randrange(64)))
                length = len(body) if rng.random() < 0.8 else rng.randrange(65536)
                stream += length.to_bytes(2, "big") + body
            tcp.sendall(stream[:rng.randint(1, len(stream))])
    for tcp_flag in (False, True):
        assert valid_answer(port, tcp=tcp_flag), f"server stopped answering (seed {SEED})"
    assert web_agent.proc is not None and web_agent.proc.poll() is None
    assert "DNS query failed" not in web_agent.log() and "Traceback" not in web_agent.log()
