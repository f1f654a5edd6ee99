"""Shared helpers for the HAProxy tests (no tests here): real HAProxy, real HTTP backends, fixed catalogs.

Everything binds 127.0.0.1 on free ports; unix sockets live in a short directory under /tmp because
a socket path is limited to 107 bytes and pytest's tmp_path can be longer than that.
"""

from __future__ import annotations

import base64
import http.server
import logging
import os
import shutil
import signal
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from templater import dependencies as dep
from templater.config import HAProxySettings
from templater.haproxy.binary import find_haproxy
from templater.haproxy.mastercli import MasterCLI
from templater.metrics import Metrics as TemplaterMetrics
from tests.procs import ROOT, free_port, wait_until
from tests.templater_proc import TemplaterProcess

TEMPLATES = ROOT / "templates"
HAPROXY = find_haproxy()
log = logging.getLogger("test.haproxy")


# --------------------------------------------------------------------------- the templater's settings and metrics


#: The controller takes the templater's own `haproxy {}` settings (kept under the name the tests import).
Settings = HAProxySettings


class Metrics(TemplaterMetrics):
    """The templater's own metrics; value() takes the counter's short name (`reloads`), as the tests do."""

    def value(self, name: str) -> float:
        return super().value(f"templater_{name}_total")


# --------------------------------------------------------------------------- short socket directory


def short_dir() -> Iterator[Path]:
    """A fresh directory with a short path (unix socket paths are limited), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="hx", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- HTTP backends


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/sleep/"):       # a slow request, to test draining
            time.sleep(float(self.path.rsplit("/", 1)[1]))
        body = self.server.label.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # HAProxy closing an idle keep-alive connection is not news


class Backend:
    """A real HTTP server on 127.0.0.1:<free port> answering its label; stop() joins its thread."""

    def __init__(self, label: str | None = None):
        self.port = free_port()
        self.label = label or str(self.port)
        self.server = _Server(("127.0.0.1", self.port), _Handler)
        self.server.label = self.label  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# --------------------------------------------------------------------------- a fixed catalog for renders


def instance(node: str, service_id: str, name: str, port: int, address: str = "127.0.0.1",
             meta: dict[str, str] | None = None, status: str = "passing", weight: int = 1,
             tags: list[str] | None = None) -> dict[str, Any]:
    """One /v1/health/service entry in Consul's shape."""
    return {"Node": {"Node": node, "Address": "127.0.0.1", "Meta": {}},
            "Service": {"ID": service_id, "Service": name, "Address": address, "Port": port,
                        "Meta": meta or {}, "Tags": tags or [], "Weights": {"Passing": weight, "Warning": 1}},
            "Checks": [{"CheckID": f"service:{service_id}", "Status": status}]}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class FixedCatalog:
    """A DataSource for templater.render with fixed health entries and KV pairs (Consul JSON shapes)."""

    def __init__(self, health: dict[str, list[dict[str, Any]]] | None = None, kv: dict[str, str] | None = None):
        self.health = health or {}
        self.kv = kv or {}

    def lookup(self, dependency: dep.Dependency) -> tuple[bool, Any]:
        if isinstance(dependency, dep.CatalogServicesQuery):
            return True, dependency.parse({name: [] for name, entries in self.health.items() if entries})
        if isinstance(dependency, dep.HealthServiceQuery):
            entries = [e for e in self.health.get(dependency.name, [])
                       if not dependency.tag or dependency.tag in e["Service"]["Tags"]]
            return True, dependency.parse(entries)
        if isinstance(dependency, dep.KVKeyQuery):
            value = self.kv.get(dependency.path)
            return True, dependency.parse(None if value is None else [{"Value": _b64(value)}])
        if isinstance(dependency, dep.KVPrefixQuery):
            return True, dependency.parse([{"Key": k, "Value": _b64(v)} for k, v in sorted(self.kv.items())
                                           if k.startswith(dependency.prefix)])
        raise AssertionError(f"unexpected dependency {dependency}")


def render(name: str, catalog: FixedCatalog, haproxy: dict[str, Any] | None = None) -> str:
    """Render a shipped template with the templater's own sandboxed environment and functions."""
    from templater.render import RenderContext, _current, make_environment

    environment = make_environment(str(TEMPLATES))
    template = environment.get_template(name)
    context = RenderContext(catalog)
    token = _current.set(context)
    try:
        text = template.render(haproxy=haproxy or {})
    finally:
        _current.reset(token)
    assert not context.missing, context.missing
    return text


# --------------------------------------------------------------------------- load through HAProxy


class LoadLoop:
    """Requests in a loop through HAProxy (new connection each time), counting statuses and errors."""

    def __init__(self, url: str, host: str | None = None, threads: int = 2):
        self.url = url
        self.headers = {"Host": host} if host else {}
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.bodies: set[str] = set()
        self.bad: list[tuple[float, str]] = []      # (monotonic start time, status or error) of non-200s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> LoadLoop:
        for thread in self._threads:
            thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                reply = requests.get(self.url, headers=self.headers, timeout=5)
                with self._lock:
                    self.statuses[reply.status_code] = self.statuses.get(reply.status_code, 0) + 1
                    self.bodies.add(reply.text)
                    if reply.status_code != 200:
                        self.bad.append((started, str(reply.status_code)))
            except requests.RequestException as exc:
                with self._lock:
                    self.errors.append(repr(exc))
                    self.bad.append((started, repr(exc)))

    def stop(self) -> LoadLoop:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        return self

    def advance(self, count: int = 20, timeout: float = 30.0) -> None:
        """Wait until `count` more requests have completed (the load really overlaps each event)."""
        target = self.total() + count
        wait_until(lambda: self.total() >= target, timeout, message=f"{count} more requests")

    def total(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)

    def unexpected(self, windows: list[tuple[float, float]]) -> list[tuple[float, str]]:
        """Non-200 answers except 503s that started inside one of the windows (no instance existed)."""
        return [(t, what) for t, what in self.bad
                if not (what == "503" and any(start <= t <= end for start, end in windows))]

    def failures(self, allowed: tuple[int, ...] = (200,)) -> dict[str, int]:
        bad = {str(code): count for code, count in self.statuses.items() if code not in allowed}
        if self.errors:
            bad["errors"] = len(self.errors)
        return bad


# --------------------------------------------------------------------------- the templater as a process


class EdgeTemplater(TemplaterProcess):
    """`python -m templater` rendering a shipped HAProxy template and supervising HAProxy.

    Ports reach the template through the EDGESTACK_* environment defaults the templates read, so
    the test does not depend on how the templater passes the `haproxy {}` block to templates.
    """

    START_TIMEOUT = 20.0
    STOP_TIMEOUT = 15.0

    def __init__(self, run: Path, consul_addr: str, mode: str = "runtime", template: str = "haproxy.cfg.j2",
                 wait: str | None = None, dns_addr: str | None = None, extra_hcl: str = ""):
        self.run = run
        self.http_port = free_port()
        self.stats_port = free_port()
        self.config = run / "haproxy.cfg"
        self.master_socket = run / "haproxy-master.sock"
        self.admin_socket = run / "haproxy-admin.sock"
        env = {"EDGESTACK_HTTP_PORT": str(self.http_port), "EDGESTACK_STATS_PORT": str(self.stats_port)}
        if dns_addr:
            env["EDGESTACK_DNS_ADDR"] = dns_addr
        wait_block = f'wait {{\n  min = "{wait.split(":")[0]}"\n  max = "{wait.split(":")[-1]}"\n}}\n' if wait else ""
        (run / "templater.hcl").write_text(
            f'consul {{\n  address = "{consul_addr}"\n}}\n{wait_block}'
            f'template {{\n  source = "{TEMPLATES / template}"\n  destination = "{self.config}"\n}}\n'
            f'haproxy {{\n  mode = "{mode}"\n  master_socket = "{self.master_socket}"\n'
            f'  drain_timeout = 2\n{extra_hcl}}}\n')
        super().__init__(["-config", str(run / "templater.hcl")], run / "templater.log", env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait_for_haproxy: bool = True) -> EdgeTemplater:
        super().start()
        if wait_for_haproxy:
            wait_until(lambda: MasterCLI(str(self.master_socket)).alive(), 20, message="HAProxy up")
        return self

    def metric(self, name: str) -> float:
        """By the name after `templater_` (`reloads_total`), as the HAProxy tests read them."""
        return super().metric(f"templater_{name}")

    def kill_haproxy(self) -> None:
        """Teardown safety net: stop a master left running (after a templater was SIGKILLed)."""
        master = MasterCLI(str(self.master_socket))
        try:
            table = master.show_proc(connect_retry=0)
        except Exception:  # noqa: BLE001 - nothing answers: nothing to stop
            return
        if table.master:
            os.kill(table.master.pid, signal.SIGTERM)
            wait_until(lambda: not master.alive(), 10, message="HAProxy master stopped")
