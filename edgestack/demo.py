"""`edgestack demo-app`: a tiny HTTP service that registers itself, the registrator role built in.

Why it exists: the stack needs something to route to that behaves like a real service instance —
it registers with an HTTP health check when it starts, answers with its instance ID so a user sees
HAProxy spread requests, and deregisters when stopped (SIGTERM/SIGINT), so `edgestack scale`,
`docker compose --scale` and Ctrl-C leave the catalog clean. A crash leaves a critical check that
the registry reaps after `DeregisterCriticalServiceAfter`.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

from edgestack.client import Client, CLIError

HEALTH_PATH = "/health"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgestack demo-app", allow_abbrev=False,
                                description="Run the demo HTTP service; it registers itself.")
    p.add_argument("-name", "--name", default="web", help="service name (default web)")
    p.add_argument("-id", "--id", default="", help="instance ID (default <name>-<host>-<port>)")
    p.add_argument("-port", "--port", type=int, default=0, help="port to listen on (0 = any free port)")
    p.add_argument("-bind", "--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("-address", "--address", default="",
                   help="address to register (default: the bind address; with 0.0.0.0, this host's IP)")
    p.add_argument("-http-addr", "--http-addr", dest="http_addr", help="registry address (CONSUL_HTTP_ADDR)")
    p.add_argument("-token", "--token", dest="token", help="ACL token (CONSUL_HTTP_TOKEN)")
    p.add_argument("-meta", "--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="service Meta (repeatable), e.g. -meta edge-host=web.local; default edge-path=/")
    p.add_argument("-tag", "--tag", action="append", default=[], help="service tag (repeatable)")
    p.add_argument("-check-interval", "--check-interval", dest="check_interval", default="2s",
                   help="how often the registry checks /health (default 2s)")
    return p


def parse_meta(pairs: list[str]) -> dict[str, str]:
    """`-meta k=v` flags; with none, route every path to this service (Meta edge-path=/)."""
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"edgestack demo-app: -meta expects KEY=VALUE, got {pair!r}")
        meta[key] = value
    return meta or {"edge-path": "/"}


def advertised_address(bind: str, address: str) -> str:
    """The address other machines (the registry's checker, HAProxy) reach this instance on."""
    if address:
        return address
    if bind not in ("0.0.0.0", "", "::"):
        return bind
    try:
        return socket.gethostbyname(socket.gethostname())  # a container's own IP on its network
    except OSError:
        return "127.0.0.1"


class DemoHandler(BaseHTTPRequestHandler):
    """Answers every GET with the instance ID (text, or JSON when asked); /health is the check."""

    server: DemoServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        info = self.server.info
        if self.path == HEALTH_PATH:
            self._send(200, "ok\n", "text/plain")
        elif "json" in self.headers.get("Accept", ""):
            self._send(200, json.dumps(dict(info, path=self.path)) + "\n", "application/json")
        else:
            where = f"{info['service']} on {info['address']}:{info['port']}"
            self._send(200, f"hello from {info['id']} ({where})\n", "text/plain")

    def _send(self, status: int, body: str, content_type: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Instance", self.server.info["id"])
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        """One line per request on stderr is a log flood under load; keep errors only."""


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, bind: str, port: int):
        super().__init__((bind, port), DemoHandler)
        self.info: dict[str, Any] = {}


def registration(args: argparse.Namespace, address: str, port: int, instance_id: str) -> dict[str, Any]:
    """The agent's service definition, with the HTTP check the registry runs against /health."""
    return {
        "ID": instance_id, "Name": args.name, "Address": address, "Port": port, "Tags": args.tag,
        "Meta": parse_meta(args.meta),
        "Check": {"Name": f"{args.name} HTTP {HEALTH_PATH}", "HTTP": f"http://{address}:{port}{HEALTH_PATH}",
                  "Interval": args.check_interval, "Timeout": "2s", "DeregisterCriticalServiceAfter": "1m"},
    }


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        server = DemoServer(args.bind, args.port)
    except OSError as exc:
        raise CLIError(f"edgestack demo-app: cannot listen on {args.bind}:{args.port}: "
                       f"{exc.strerror}") from None
    port = server.server_address[1]
    address = advertised_address(args.bind, args.address)
    instance_id = args.id or f"{args.name}-{socket.gethostname()}-{port}"
    server.info = {"id": instance_id, "service": args.name, "address": address, "port": port}
    client = Client(args.http_addr, args.token, timeout=10.0)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="demo-http", daemon=True)
    thread.start()
    registered = False
    try:
        client.call("PUT", "/v1/agent/service/register", json=registration(args, address, port, instance_id))
        registered = True
        print(f"{instance_id}: serving on {args.bind}:{port}, registered as {args.name} at {address}:{port} "
              f"with {client.url}", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        if registered:
            _deregister(client, instance_id)
    return 0


def _deregister(client: Client, instance_id: str) -> None:
    """Best effort: a registry already gone cannot be told; the check's reaper cleans up later."""
    try:
        client.call("PUT", f"/v1/agent/service/deregister/{quote(instance_id, safe='')}")
        print(f"{instance_id}: deregistered", flush=True)
    except CLIError as exc:
        print(f"{instance_id}: could not deregister: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
