"""The registry's DNS interface: Consul's names over UDP and TCP, answers pre-encoded per catalog index.

This module is the network side: the listeners, the cache hit path, forwarding to recursors and the
agent hook. What to answer and how it is encoded and cached lives in registry/dnsanswers.py, name rules
in registry/dnsnames.py, message parsing in registry/dnswire.py, settings in registry/dnssettings.py.

Why it looks the way it does:
- HAProxy's resolvers ask the same few SRV questions over and over, so a cache hit costs one dict
  lookup on the query's bytes after the ID, a rotation through the pre-encoded permutations and one
  `sendto`; only a miss parses the query (DnsServer.answer).
- Never an open resolver: names outside the domain are forwarded only with `-recursor`, else SERVFAIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Callable
from typing import Any

from registry.dnsanswers import Answer, AnswerBuilder, AnswerCache, Limits, encode
from registry.dnssettings import DnsSettings
from registry.dnswire import FORMERR, RA, SERVFAIL, TC, Ignored, Malformed, error_reply, parse_query

log = logging.getLogger("registry.dns")

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
            plan = self.builder.plan_query(query)
            if plan.forward and self.recursion:
                self.forwarder.forward(data, tcp, reply)
                return
            bodies = encode(query, plan, Limits.for_query(query, tcp, self.settings), self.recursion)
            cached = Answer(bodies, key, plan.deps)
            self.cache.put(cached)
        if not query.edns_options:  # EDNS options (cookies) make every query unique: no alias
            self.cache.alias(tcp, data[2:], cached)
        reply(data[:2] + cached.bodies[random.randrange(len(cached.bodies))])


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
