"""Wiring: open the store, register this node, start HTTP (and DNS, checks, config watching), stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from registry import VERSION
from registry.acl import ACLService
from registry.config import AgentConfig, ConfigError, parse_args
from registry.http import build_app
from registry.persistence import open_persistence
from registry.store import Store

log = logging.getLogger("registry.agent")


@dataclass
class AgentInfo:
    """What endpoints need to know about this agent (agent/self, members, status)."""

    node_name: str
    node_id: str
    datacenter: str
    advertise: str
    http_port: int
    dns_port: int
    enable_script_checks: bool
    config: AgentConfig = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def leader_addr(self) -> str:
        return f"{self.advertise}:8300"

    def debug_config(self) -> dict[str, Any]:
        return {"NodeName": self.node_name, "Datacenter": self.datacenter, "ServerMode": True,
                "HTTPPort": self.http_port, "DNSPort": self.dns_port, "Version": VERSION}


class Agent:
    """One running registry: store + HTTP API (+ DNS and check runners when their modules are present)."""

    def __init__(self, config: AgentConfig):
        self.config = config
        self.persistence = open_persistence(config.data_dir)
        self.store = Store(self.persistence, config.node_name, config.datacenter)
        self.info = AgentInfo(config.node_name, self._node_id(), config.datacenter, config.bind_addr,
                              config.http_port, config.dns_port, config.enable_remote_script_checks, config)
        self.runner: web.AppRunner | None = None
        self.services: list[Any] = []  # started parts with async stop()
        self.stopped = asyncio.Event()
        self.exit_code = 0
        self.store.on_fatal = self._fatal

    def _fatal(self, exc: Exception) -> None:
        self.exit_code = 1
        self.stopped.set()

    def _node_id(self) -> str:
        given = self.config.raw.get("node_id")
        return given or self.store.meta.get("node_id") or str(uuid.uuid4())

    async def start(self) -> None:
        await self._register_self()
        self.store.arm_all_session_timers()
        self.acl = ACLService(self.store, self.config.acl)
        await self.acl.setup()
        app = build_app(self.store, self.info, self.acl)
        self.app = app
        await self._start_optional_parts(app)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.client_addr, self.config.http_port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            log.error("cannot listen on %s:%d (HTTP): %s", self.config.client_addr, self.config.http_port,
                      exc.strerror)
            raise
        log.info("edgestack registry %s ready: node %s, datacenter %s, HTTP http://%s:%d%s", VERSION,
                 self.info.node_name, self.info.datacenter, self.config.client_addr, self.config.http_port,
                 self._dns_text())

    def _dns_text(self) -> str:
        return f", DNS {self.config.client_addr}:{self.config.dns_port}" if self.app.get("dns") else ""

    async def _start_optional_parts(self, app: web.Application) -> None:
        """DNS, check runners and config-file services live in their own modules (later issues)."""
        for module_name, attr in (("registry.checks", "start_checks"), ("registry.dns", "start_dns"),
                                  ("registry.services_config", "start_config_services")):
            try:
                module = __import__(module_name, fromlist=[attr])
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                continue
            part = await getattr(module, attr)(self, app)
            if part is not None:
                self.services.append(part)

    async def _register_self(self) -> None:
        """This node, the `consul` service and serfHealth, as a Consul server registers itself."""
        addr = self.info.advertise
        node = {"ID": self.info.node_id, "Node": self.info.node_name, "Address": addr,
                "Datacenter": self.info.datacenter,
                "TaggedAddresses": {"lan": addr, "lan_ipv4": addr, "wan": addr, "wan_ipv4": addr},
                "Meta": {"consul-network-segment": ""}}
        service = {"ID": "consul", "Service": "consul", "Tags": [], "Address": "", "Meta": {}, "Port": 8300,
                   "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False}
        check = {"Node": self.info.node_name, "CheckID": "serfHealth", "Name": "Serf Health Status",
                 "Status": "passing", "Notes": "", "Output": "Agent alive and reachable", "ServiceID": "",
                 "ServiceName": "", "ServiceTags": [], "Type": "", "Interval": "", "Timeout": "",
                 "ExposedPort": 0, "Definition": {}}
        await self.store.catalog_register(node, service, [check])
        if self.store.meta.get("node_id") != self.info.node_id:
            await self.store.put_record("meta", "node_id", self.info.node_id, "meta")  # type: ignore[arg-type]

    async def stop(self) -> None:
        self.store.wake_all()
        for part in reversed(self.services):
            with contextlib.suppress(Exception):
                await part.stop()
        if self.runner is not None:
            await self.runner.cleanup()
        self.persistence.close()
        log.info("edgestack registry stopped")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def serve(config: AgentConfig) -> int:
    agent = Agent(config)
    try:
        await agent.start()
    except OSError:
        await agent.stop()  # the part that could not bind has said which address and why
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.stopped.set)
    reload = agent.app.get("reload")
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
    await agent.stopped.wait()
    log.info("stopping" if agent.exit_code else "signal received, stopping")
    await agent.stop()
    return agent.exit_code


def main(argv: list[str]) -> int:
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    setup_logging(config.log_level)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(config))
    return uvloop.run(serve(config))
