"""Dependencies: one class per registry query a template can read, and the values they produce.

A dependency is a frozen (hashable) description of a query, so two templates that call
`service("web")` share one watch. Each class knows its URL, how to parse Consul's documented JSON
into the frozen dataclasses the templates use, and how to fetch (blocking when it can). The value
classes' field names are a contract with the HAProxy templates in templates/.
"""

from __future__ import annotations

import base64
import threading
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from templater.client import ConsulClient

STATES = ("any", "passing", "warning", "critical", "maintenance")
VOLATILE_CHECK_FIELDS = frozenset({"Output", "CreateIndex", "ModifyIndex"})
FILE_POLL_INTERVAL = 1.0

# --------------------------------------------------------------------------- values seen by templates


@dataclass(frozen=True)
class CatalogService:
    name: str
    tags: list[str]


@dataclass(frozen=True)
class Weights:
    passing: int = 1
    warning: int = 1


@dataclass(frozen=True)
class ServiceInstance:
    """One instance of a service on a node (HAProxy: one server)."""

    node: str
    node_address: str
    node_meta: dict[str, str]
    address: str
    id: str
    name: str
    tags: list[str]
    meta: dict[str, str]
    port: int
    weights: Weights
    status: str
    checks: list[dict[str, Any]]


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    datacenter: str
    meta: dict[str, str]
    tagged_addresses: dict[str, str]


@dataclass(frozen=True)
class NodeService:
    id: str
    name: str
    tags: list[str]
    meta: dict[str, str]
    address: str
    port: int


@dataclass(frozen=True)
class NodeServices:
    node: Node
    services: list[NodeService]


@dataclass(frozen=True)
class KeyPair:
    """A KV pair: `key` relative to the prefix asked for, `path` the full key."""

    key: str
    path: str
    value: str


@dataclass(frozen=True)
class Fetched:
    """What one fetch produced: the parsed value and the index to block on next."""

    value: Any
    index: int


# --------------------------------------------------------------------------- parsing helpers


def aggregated_status(checks: list[dict[str, Any]]) -> str:
    """Worst status wins: maintenance > critical > warning > passing; no checks means passing."""
    statuses = set()
    for check in checks:
        check_id = str(check.get("CheckID", ""))
        if check_id == "_node_maintenance" or check_id.startswith("_service_maintenance:"):
            return "maintenance"
        statuses.add(str(check.get("Status", "")).lower())
    for status in ("critical", "warning"):
        if status in statuses:
            return status
    return "passing"


def parse_states(state: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """"passing,warning" or a list → a sorted tuple, so equal filters share one dependency."""
    parts = state.split(",") if isinstance(state, str) else list(state)
    states = tuple(sorted({p.strip().lower() for p in parts if p.strip()}))
    bad = [s for s in states if s not in STATES]
    if bad:
        raise ValueError(f"unknown health state {bad[0]!r}; use any, passing, warning, critical, maintenance")
    return states or ("passing",)


def _str_dict(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items()}


def _weights(value: Any) -> Weights:
    value = value or {}
    return Weights(passing=int(value.get("Passing", 1) or 1), warning=int(value.get("Warning", 1) or 1))


def parse_node(raw: dict[str, Any]) -> Node:
    return Node(name=str(raw.get("Node", "")), address=str(raw.get("Address", "")),
                datacenter=str(raw.get("Datacenter", "")), meta=_str_dict(raw.get("Meta")),
                tagged_addresses=_str_dict(raw.get("TaggedAddresses")))


def parse_health_entry(entry: dict[str, Any]) -> ServiceInstance:
    """One /v1/health/service element; the service address falls back to the node's."""
    node, service = entry.get("Node") or {}, entry.get("Service") or {}
    checks = list(entry.get("Checks") or [])
    node_address = str(node.get("Address", ""))
    return ServiceInstance(
        node=str(node.get("Node", "")), node_address=node_address, node_meta=_str_dict(node.get("Meta")),
        address=str(service.get("Address") or node_address), id=str(service.get("ID", "")),
        name=str(service.get("Service", "")), tags=list(service.get("Tags") or []),
        meta=_str_dict(service.get("Meta")), port=int(service.get("Port") or 0),
        weights=_weights(service.get("Weights")), status=aggregated_status(checks), checks=checks)


def decode_value(raw: Any) -> str:
    """KV values are base64; an empty value comes back as null."""
    if not raw:
        return ""
    return base64.b64decode(raw).decode("utf-8", errors="replace")


def normalize_prefix(prefix: str) -> str:
    """"haproxy/backends" and "haproxy/backends/" mean the same folder; never match "backends2/"."""
    prefix = prefix.strip().lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class Dependency:
    """Base: subclasses are frozen dataclasses, hashable and equal by their query fields."""

    consul_index: ClassVar[bool] = True

    def key(self) -> str:
        raise NotImplementedError

    def comparable(self, value: Any) -> Any:
        """What must differ for a change to count; by default the whole value."""
        return value

    def fetch(self, client: ConsulClient, index: int, wait: float, stop: threading.Event) -> Fetched:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.key()


@dataclass(frozen=True)
class CatalogServicesQuery(Dependency):
    """/v1/catalog/services → every service name with its tags (no health)."""

    def key(self) -> str:
        return "catalog.services"

    def fetch(self, client: ConsulClient, index: int, wait: float, stop: threading.Event) -> Fetched:
        result = client.get("catalog/services", index=index, wait=wait, stop=stop)
        return Fetched(self.parse(result.data), result.index)

    @staticmethod
    def parse(data: Any) -> list[CatalogService]:
        return [CatalogService(name=str(name), tags=sorted(set(tags or [])))
                for name, tags in sorted((data or {}).items())]


@dataclass(frozen=True)
class HealthServiceQuery(Dependency):
    """/v1/health/service/<name>: instances with aggregated health, filtered by states (OR)."""

    name: str
    tag: str | None = None
    states: tuple[str, ...] = ("passing",)

    def key(self) -> str:
        tag = f"{self.tag}." if self.tag else ""
        return f"health.service({tag}{self.name}|{','.join(self.states)})"

    def fetch(self, client: ConsulClient, index: int, wait: float, stop: threading.Event) -> Fetched:
        params: dict[str, str] = {}
        if self.states == ("passing",):
            params["passing"] = "1"
        if self.tag:
            params["tag"] = self.tag
        result = client.get(f"health/service/{self.name}", params, index=index, wait=wait, stop=stop)
        return Fetched(self.parse(result.data), result.index)

    def comparable(self, value: Any) -> Any:
        """Check outputs and indexes change on every check run without changing health: ignore them,
        so a periodic HTTP check does not re-render every template that lists the service."""
        return [(replace(i, checks=[]), [{k: v for k, v in c.items() if k not in VOLATILE_CHECK_FIELDS}
                                         for c in i.checks]) for i in value or []]

    def parse(self, data: Any) -> list[ServiceInstance]:
        instances = [parse_health_entry(entry) for entry in data or []]
        if "any" not in self.states:
            instances = [i for i in instances if i.status in self.states]
        return sorted(instances, key=lambda i: (i.node, i.id))


@dataclass(frozen=True)
class CatalogNodesQuery(Dependency):
    """/v1/catalog/nodes → every node."""

    def key(self) -> str:
        return "catalog.nodes"

    def fetch(self, client: ConsulClient, index: int, wait: float, stop: threading.Event) -> Fetched:
        result = client.get("catalog/nodes", index=index, wait=wait, stop=stop)
        return Fetched(self.parse(result.data), result.index)

    @staticmethod
    def parse(data: Any) -> list[Node]:
        return sorted((parse_node(raw) for raw in data or []), key=lambda n: n.name)


@dataclass(frozen=True)
class CatalogNodeQuery(Dependency):
    """/v1/catalog/node/<name> → the node and its services; None (the local agent) asks agent/self."""

    name: str | None = None

    def key(self) -> str:
        return f"catalog.node({self.name or ''})"

    def fetch(self, client: ConsulClient, index: int, wait: float, stop: threading.Event) -> Fetched:
        name = self.name or client.agent_node_name()
        result = client.get(f"catalog/node/{name}", index=index, wait=wait, stop=stop)
        return Fetched(self.parse(result.data), result.index)

    @staticmethod
    def parse(data: Any) -> NodeServices | None:
        if not data or not data.get("Node"):
            return None
        services = [NodeService(id=str(s.get("ID", "")), name=str(s.get("Service", "")),
                                tags=list(s.get("Tags") or []), meta=_str_dict(s.get("Meta")),
                                address=str(s.get("Address", "")), port=int(s.get("Port") or 0))
                    for s in (data.get("Services") or {}).values()]
        return NodeServices(node=parse_node(data["Node"]), services=sorted(services, key=lambda s: s.id))


@dataclass(frozen=True)
class KVKeyQuery(Dependency):
    """/v1/kv/<path> → the value as text, or None while the key does not exist (404)."""

    path: str

    def key(self) -> str:
        return f"kv.key({self.path})"

    def fetch(self, client: ConsulClient, index: int, wait: float, stop: threading.Event) -> Fetched:
        result = client.get(f"kv/{self.path.lstrip('/')}", index=index, wait=wait, stop=stop, allow_404=True)
        return Fetched(self.parse(result.data), result.index)

    @staticmethod
    def parse(data: Any) -> str | None:
        if not data:
            return None
        return decode_value(data[0].get("Value"))


@dataclass(frozen=True)
class KVPrefixQuery(Dependency):
    """/v1/kv/<prefix>?recurse → every pair below the prefix; ls/tree/safe_* all share it."""

    prefix: str

    def key(self) -> str:
        return f"kv.list({self.prefix})"

    def fetch(self, client: ConsulClient, index: int, wait: float, stop: threading.Event) -> Fetched:
        result = client.get(f"kv/{self.prefix}", {"recurse": ""}, index=index, wait=wait, stop=stop,
                            allow_404=True)
        return Fetched(self.parse(result.data), result.index)

    def parse(self, data: Any) -> list[KeyPair]:
        pairs = []
        for entry in data or []:
            path = str(entry.get("Key", ""))
            relative = path[len(self.prefix):] if path.startswith(self.prefix) else path
            if relative and not relative.endswith("/"):
                pairs.append(KeyPair(key=relative, path=path, value=decode_value(entry.get("Value"))))
        return sorted(pairs, key=lambda p: p.path)


@dataclass(frozen=True)
class FileQuery(Dependency):
    """A local file, polled (not a registry query): its text, or None while it does not exist."""

    consul_index: ClassVar[bool] = False
    path: str = field(default="")

    def key(self) -> str:
        return f"file({self.path})"

    def read(self) -> tuple[str | None, int]:
        try:
            with open(self.path, "rb") as handle:
                content = handle.read()
        except OSError:
            return None, 1
        return content.decode("utf-8", errors="replace"), zlib.crc32(content) + 2

    def fetch(self, client: ConsulClient, index: int, wait: float, stop: threading.Event) -> Fetched:
        """Returns at once on the first call, then when the content's checksum changes."""
        deadline = time.monotonic() + wait
        value, version = self.read()
        while index and version == index and time.monotonic() < deadline and not stop.is_set():
            stop.wait(FILE_POLL_INTERVAL)
            value, version = self.read()
        return Fetched(value, version)
