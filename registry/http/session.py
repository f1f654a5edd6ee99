"""/v1/session: sessions for KV locks (create, destroy, info, list, node, renew)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from registry.blocking import Result
from registry.body import Body, require_strings
from registry.durations import DurationError, parse_duration
from registry.http.authz import require, visible
from registry.http.common import RequestError, blocking_reply, check_consistency, indexed, read_object, reply, store_of

routes = web.RouteTableDef()

SESSION_ALIASES = {"lockdelay": "lockdelay"}


def _duration(value: object) -> float:
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise RequestError(400, f"Request decode failed: {exc}") from None


def _lock_delay(value: object) -> str:
    """Consul's fix-up: a number below 1000 means seconds, a larger one nanoseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value}s" if value < 1000 else f"{value / 1e9}s"
    _duration(value)
    return str(value)


def _check_lists(body: Body) -> None:
    """NodeChecks/Checks: lists of check IDs; ServiceChecks: a list of {ID, Namespace} objects."""
    for name in ("NodeChecks", "Checks"):
        value = body.get(name)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise RequestError(400, f"Request decode failed: {name} must be a list of check IDs")
    value = body.get("ServiceChecks")
    if value is not None and (not isinstance(value, list) or not all(
            isinstance(v, dict) and isinstance(v.get("ID", ""), str) for v in value)):
        raise RequestError(400, "Request decode failed: ServiceChecks must be a list of {\"ID\": ...} objects")


@routes.put("/v1/session/create")
async def create(request: web.Request) -> web.Response:
    body = await read_object(request, SESSION_ALIASES, required=False)
    require_strings(body, "Name", "Node", "Behavior")
    _check_lists(body)
    behavior = body.get("Behavior") or "release"
    if behavior not in ("release", "delete"):
        raise RequestError(400, f"Invalid Behavior setting '{behavior}'")
    request_fields = {}
    for name in ("Name", "Node", "LockDelay", "Behavior", "TTL", "NodeChecks", "ServiceChecks", "Checks"):
        if body.has(name):
            request_fields[name] = body.get(name)
    if "LockDelay" in request_fields:
        request_fields["LockDelay"] = _lock_delay(request_fields["LockDelay"])
    if "TTL" in request_fields:
        _duration(request_fields["TTL"])
    require(request, "session", request_fields.get("Node") or store_of(request).node_name, "write")
    sid = await store_of(request).session_create(request_fields)
    return reply(request, {"ID": sid})


@routes.put("/v1/session/destroy/{session}")
async def destroy(request: web.Request) -> web.Response:
    _require_session_write(request)
    await store_of(request).session_destroy(request.match_info["session"])
    return reply(request, True)


@routes.put("/v1/session/renew/{session}")
async def renew(request: web.Request) -> web.Response:
    sid = request.match_info["session"]
    _require_session_write(request)
    session = await store_of(request).session_renew(sid)
    if session is None:
        raise RequestError(404, f"Session id '{sid}' not found")
    return reply(request, [session])


def _require_session_write(request: web.Request) -> None:
    session = store_of(request).sessions.get(request.match_info["session"])
    if session is not None:
        require(request, "session", session["Node"], "write")


async def _sessions_reply(request: web.Request, topic: str, keep: Callable[[dict], bool]) -> web.Response:
    """The three session reads differ only in their topic and which sessions they keep."""
    check_consistency(request)
    store = store_of(request)

    def compute() -> Result:
        body = visible(request, [s for _, s in sorted(store.sessions.items()) if keep(s)],
                       lambda who, s: who.allowed("session", s["Node"], "read"))
        return indexed(store, topic, "sessions", body)

    return await blocking_reply(request, [topic], compute)


@routes.get("/v1/session/info/{session}")
async def info(request: web.Request) -> web.Response:
    sid = request.match_info["session"]
    return await _sessions_reply(request, f"session:{sid}", lambda s: s["ID"] == sid)


@routes.get("/v1/session/list")
async def list_(request: web.Request) -> web.Response:
    return await _sessions_reply(request, "sessions", lambda s: True)


@routes.get("/v1/session/node/{node}")
async def node(request: web.Request) -> web.Response:
    name = request.match_info["node"]
    return await _sessions_reply(request, f"session_node:{name}", lambda s: s["Node"] == name)
