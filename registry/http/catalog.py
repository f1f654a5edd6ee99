"""/v1/catalog: nodes and services as registered, without health filtering."""

from __future__ import annotations

from aiohttp import web

from registry.blocking import Result
from registry.body import require_strings
from registry.filter import CATALOG_SERVICE_FIELDS, NODE_FIELDS, Predicate
from registry.http.authz import authz, can_read_node, can_read_service, require, require_overwrite, visible
from registry.http.common import (
    Body,
    RequestError,
    blocking_reply,
    check_consistency,
    filter_predicate,
    indexed,
    read_object,
    reply,
    store_of,
    string_map,
    typed,
)
from registry.http.reads import (
    Instance,
    has_tags,
    meta_matches,
    node_meta_filter,
    node_read,
    service_index,
    service_read,
)
from registry.http.services import parse_service
from registry.http.views import catalog_service, check_view, node_service
from registry.store import Store

routes = web.RouteTableDef()


@routes.get("/v1/catalog/datacenters")
async def datacenters(request: web.Request) -> web.Response:
    return reply(request, [request.app["agent_info"].datacenter])


@routes.get("/v1/catalog/nodes")
async def nodes(request: web.Request) -> web.Response:
    check_consistency(request)
    store = store_of(request)
    wanted = node_meta_filter(request)

    def compute() -> Result:
        body = [n for _, n in sorted(store.nodes.items()) if meta_matches(n, wanted)]
        return Result(visible(request, body, lambda who, n: can_read_node(who, n["Node"])),
                      store.topic_index("nodes"))

    return await blocking_reply(request, ["nodes"], compute, NODE_FIELDS)


@routes.get("/v1/catalog/services")
async def services(request: web.Request) -> web.Response:
    check_consistency(request)
    store = store_of(request)
    wanted = node_meta_filter(request)
    where = filter_predicate(request, CATALOG_SERVICE_FIELDS)

    def compute() -> Result:
        names = _service_tags(store, wanted, where) if wanted or where else store.service_names()
        allowed = visible(request, names, can_read_service)
        return Result({n: names[n] for n in allowed}, store.topic_index("services"))

    return await blocking_reply(request, ["services", "nodes"], compute)


def _service_tags(store: Store, wanted: dict[str, str], where: Predicate | None = None) -> dict[str, list[str]]:
    """Service name → its tags, counting only instances on nodes that match ?node-meta and, as Consul does,
    whose catalog entry (the /v1/catalog/service/:name shape) matches ?filter."""
    found: dict[str, set[str]] = {}
    for (node_name, _), svc in store.services.items():
        node = store.nodes.get(node_name, {})
        if meta_matches(node, wanted) and (where is None or (node and where(catalog_service(node, svc)))):
            found.setdefault(svc["Service"], set()).update(svc["Tags"])
    return {n: sorted(t) for n, t in sorted(found.items())}


@routes.get("/v1/catalog/service/{service}")
async def service(request: web.Request) -> web.Response:
    check_consistency(request)
    tags = request.query.getall("tag", [])

    def build(name: str, instances: list[Instance]) -> list[dict]:
        found = [(node, svc) for node, svc, _ in instances if has_tags(svc, tags)]
        found = visible(request, found, lambda who, i: can_read_service(who, name) and can_read_node(who, i[0]["Node"]))
        return [catalog_service(node, svc) for node, svc in found]

    return await service_read(request, build, CATALOG_SERVICE_FIELDS)


@routes.get("/v1/catalog/node/{node}")
async def node(request: web.Request) -> web.Response:
    check_consistency(request)
    store = store_of(request)
    name = request.match_info["node"]

    def compute() -> Result:
        record = store.nodes.get(name)
        if record is None or not visible(request, [name], can_read_node):
            return indexed(store, f"node:{name}", "nodes")
        allowed = visible(request, sorted(store.node_services.get(name, {}).items()),
                          lambda who, item: can_read_service(who, item[1]["Service"]))
        services = {sid: node_service(svc) for sid, svc in allowed}
        for view in services.values():
            view.pop("Proxy", None)
            view.pop("Connect", None)
        return Result({"Node": record, "Services": services}, store.topic_index(f"node:{name}"))

    return await blocking_reply(request, [f"node:{name}"], compute)


@routes.get("/v1/catalog/node-services/{node}")
async def node_services(request: web.Request) -> web.Response:
    return await node_read(request, lambda name: _node_services(request, name))


def _node_services(request: web.Request, name: str) -> dict | None:
    """The node and its instances as a list (node-services' shape); None for an unknown or hidden node."""
    store = store_of(request)
    record = store.nodes.get(name)
    if record is None or not visible(request, [name], can_read_node):
        return None
    services = sorted(store.node_services.get(name, {}).values(), key=lambda s: s["ID"])
    services = visible(request, services, lambda who, svc: can_read_service(who, svc["Service"]))
    return {"Node": record, "Services": [node_service(s) for s in services]}


@routes.put("/v1/catalog/register")
async def register(request: web.Request) -> web.Response:
    body = await read_object(request)
    require_strings(body, "Node", "Address", "ID", "Datacenter")
    info = request.app["agent_info"]
    node_name, address = body.get("Node", ""), body.get("Address", "")
    if not node_name or not address:
        raise RequestError(500, "Must provide node and address")
    dc = body.get("Datacenter") or info.datacenter
    if dc != info.datacenter:
        raise RequestError(500, "No path to datacenter")
    node = {"ID": typed(body.get("ID", ""), str, "ID"), "Node": node_name, "Address": address,
            "Datacenter": dc, "TaggedAddresses": string_map(body.get("TaggedAddresses"), "TaggedAddresses"),
            "Meta": string_map(body.get("NodeMeta"), "NodeMeta")}
    svc_body = body.sub("Service")
    service = parse_service(svc_body) if svc_body else None
    checks = [_catalog_check(c, node_name) for c in _check_bodies(body)]
    _require_register(request, node, service, checks, bool(body.get("SkipNodeUpdate", False)))
    await store_of(request).catalog_register(node, service, checks, bool(body.get("SkipNodeUpdate", False)))
    return reply(request, True)


def _require_register(request: web.Request, node: dict, service: dict | None, checks: list[dict],
                      skip_node_update: bool) -> None:
    """node:write to create or change the node or its node checks; service:write for the service."""
    store = store_of(request)
    existing = store.nodes.get(node["Node"])
    node_changes = existing is None or (not skip_node_update and any(existing.get(k) != v for k, v in node.items()))
    if node_changes or any(not c["ServiceID"] for c in checks):
        require(request, "node", node["Node"], "write")
    if service is not None:
        require(request, "service", service["Service"], "write")
    for check in checks:
        if check["ServiceID"]:
            svc = store.services.get((node["Node"], check["ServiceID"]))
            name = svc["Service"] if svc else (service["Service"] if service else check["ServiceID"])
            require(request, "service", name, "write")
    require_overwrite(request, store, node["Node"], service, checks)


def _check_bodies(body: Body) -> list[Body]:
    raw = []
    if body.get("Check"):
        raw.append(body.get("Check"))
    raw.extend(body.get("Checks") or [])
    if not all(isinstance(item, dict) for item in raw):
        raise RequestError(400, "Request decode failed: Checks must be objects")
    return [Body(item) for item in raw]


def _catalog_check(body: Body, node: str) -> dict:
    """Catalog checks are status records only: nothing runs them."""
    require_strings(body, "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "Type")
    name = body.get("Name", "")
    status = body.get("Status") or "critical"
    if status not in ("passing", "warning", "critical", "maintenance"):
        raise RequestError(400, "Status for checks must 'passing', 'warning', 'critical'")
    sid = body.get("ServiceID", "")
    return {"Node": node, "CheckID": body.get("CheckID") or name, "Name": name, "Status": status,
            "Notes": body.get("Notes", ""), "Output": body.get("Output", ""), "ServiceID": sid,
            "ServiceName": "", "ServiceTags": [], "Type": body.get("Type", ""), "Interval": "",
            "Timeout": "", "ExposedPort": 0, "Definition": body.get("Definition") or {}}


@routes.put("/v1/catalog/deregister")
async def deregister(request: web.Request) -> web.Response:
    body = await read_object(request)
    require_strings(body, "Node", "ServiceID", "CheckID", "Datacenter")
    node_name = body.get("Node", "")
    if not node_name:
        raise RequestError(400, "Must provide node")
    store = store_of(request)
    svc = store.services.get((node_name, body.get("ServiceID") or ""))
    if body.get("ServiceID") and svc is not None:
        require(request, "service", svc["Service"], "write")
    elif not body.get("ServiceID"):
        require(request, "node", node_name, "write")
    await store_of(request).catalog_deregister(node_name, body.get("ServiceID"), body.get("CheckID"))
    return reply(request, True)


__all__ = ["routes", "service_index", "node_meta_filter", "check_view", "authz"]
