"""/v1/health: instances with their checks, filtered by health; all blocking-capable."""

from __future__ import annotations

from aiohttp import web

from registry.blocking import Result, run_query
from registry.http.authz import can_read_check, can_read_node, can_read_service, visible
from registry.http.catalog import has_tags, meta_matches, node_meta_filter, service_index
from registry.http.common import RequestError, check_consistency, parse_bool_param, reply_result, store_of
from registry.http.views import check_view, health_entry

routes = web.RouteTableDef()

CHECK_STATES = ("any", "passing", "warning", "critical")


def _passing_param(request: web.Request) -> bool:
    if "passing" not in request.query:
        return False
    raw = request.query.get("passing", "")
    if raw == "":
        return True
    try:
        return parse_bool_param(raw)
    except ValueError:
        raise RequestError(400, "Invalid value for ?passing") from None


@routes.get("/v1/health/service/{service}")
async def service(request: web.Request) -> web.Response:
    check_consistency(request)
    store = store_of(request)
    name = request.match_info["service"]
    passing_only = _passing_param(request)
    tags = request.query.getall("tag", [])
    wanted = node_meta_filter(request)

    def compute() -> Result:
        result = service_index(store, name)
        entries = []
        for node, svc, checks in store.instances(name):
            if not has_tags(svc, tags) or not meta_matches(node, wanted):
                continue
            if passing_only and any(c["Status"] != "passing" for c in checks):
                continue
            entries.append(health_entry(node, svc, [check_view(c) for c in checks]))
        result.body = visible(request, entries, lambda who, e: can_read_service(who, name)
                              and can_read_node(who, e["Node"]["Node"]))
        return result

    return reply_result(request, await run_query(store, request.query, [f"service:{name}"], compute))


@routes.get("/v1/health/checks/{service}")
async def service_checks(request: web.Request) -> web.Response:
    check_consistency(request)
    store = store_of(request)
    name = request.match_info["service"]
    wanted = node_meta_filter(request)

    def compute() -> Result:
        result = service_index(store, name)
        checks = [check_view(c) for node, _, cs in store.instances(name) if meta_matches(node, wanted)
                  for c in cs if c["ServiceID"]]
        result.body = visible(request, sorted(checks, key=lambda c: (c["Node"], c["CheckID"])), can_read_check)
        return result

    return reply_result(request, await run_query(store, request.query, [f"service:{name}"], compute))


@routes.get("/v1/health/node/{node}")
async def node_checks(request: web.Request) -> web.Response:
    check_consistency(request)
    store = store_of(request)
    name = request.match_info["node"]

    def compute() -> Result:
        own = store.topic_index(f"node:{name}")
        checks = sorted(store.node_checks.get(name, {}).values(), key=lambda c: c["CheckID"])
        body = visible(request, [check_view(c) for c in checks], can_read_check)
        return Result(body, own or store.topic_index("nodes"), own)

    return reply_result(request, await run_query(store, request.query, [f"node:{name}"], compute))


@routes.get("/v1/health/state/{state}")
async def state(request: web.Request) -> web.Response:
    check_consistency(request)
    store = store_of(request)
    wanted = request.match_info["state"]
    if wanted not in CHECK_STATES:
        raise RequestError(400, "Bad check state")
    node_meta = node_meta_filter(request)

    def compute() -> Result:
        checks = [check_view(c) for (node, _), c in sorted(store.checks.items())
                  if (wanted == "any" or c["Status"] == wanted)
                  and (not node_meta or meta_matches(store.nodes.get(node), node_meta))]
        return Result(visible(request, checks, can_read_check), store.topic_index("checks"))

    topics = ["checks", "nodes"] if node_meta else ["checks"]
    return reply_result(request, await run_query(store, request.query, topics, compute))


@routes.get("/v1/health/connect/{service}")
@routes.get("/v1/health/ingress/{service}")
async def connect(request: web.Request) -> web.Response:
    store = store_of(request)
    return reply_result(request, Result([], max(store.topic_index("services"), 1)))
