"""/v1/health: instances with their checks, filtered by health; all blocking-capable."""

from __future__ import annotations

from aiohttp import web

from registry.blocking import Result
from registry.filter import CHECK_FIELDS, HEALTH_ENTRY_FIELDS
from registry.http.authz import can_read_check, can_read_node, can_read_service, visible
from registry.http.common import (
    RequestError,
    blocking_reply,
    check_consistency,
    parse_bool_param,
    reply_result,
    store_of,
)
from registry.http.reads import Instance, has_tags, meta_matches, node_meta_filter, node_read, service_read
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


def _all_passing(checks: list[dict]) -> bool:
    return all(c["Status"] == "passing" for c in checks)


@routes.get("/v1/health/service/{service}")
async def service(request: web.Request) -> web.Response:
    check_consistency(request)
    passing_only = _passing_param(request)
    tags = request.query.getall("tag", [])

    def build(name: str, instances: list[Instance]) -> list[dict]:
        entries = [health_entry(node, svc, [check_view(c) for c in checks]) for node, svc, checks in instances
                   if has_tags(svc, tags) and (not passing_only or _all_passing(checks))]
        return visible(request, entries, lambda who, e: can_read_service(who, name)
                       and can_read_node(who, e["Node"]["Node"]))

    return await service_read(request, build, HEALTH_ENTRY_FIELDS)


@routes.get("/v1/health/checks/{service}")
async def service_checks(request: web.Request) -> web.Response:
    check_consistency(request)

    def build(_name: str, instances: list[Instance]) -> list[dict]:
        checks = [check_view(c) for _, _, cs in instances for c in cs if c["ServiceID"]]
        return visible(request, sorted(checks, key=lambda c: (c["Node"], c["CheckID"])), can_read_check)

    return await service_read(request, build, CHECK_FIELDS)


@routes.get("/v1/health/node/{node}")
async def node_checks(request: web.Request) -> web.Response:
    check_consistency(request)

    def build(name: str) -> list[dict]:
        checks = sorted(store_of(request).node_checks.get(name, {}).values(), key=lambda c: c["CheckID"])
        return visible(request, [check_view(c) for c in checks], can_read_check)

    return await node_read(request, build, CHECK_FIELDS)


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

    return await blocking_reply(request, ["checks", "nodes"] if node_meta else ["checks"], compute, CHECK_FIELDS)


@routes.get("/v1/health/connect/{service}")
@routes.get("/v1/health/ingress/{service}")
async def connect(request: web.Request) -> web.Response:
    store = store_of(request)
    return reply_result(request, Result([], max(store.topic_index("services"), 1)))
