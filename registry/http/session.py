"""/v1/session: sessions for KV locks (create, destroy, info, list, node, renew)."""

from __future__ import annotations

from aiohttp import web

from registry.blocking import Result, run_query
from registry.durations import DurationError, parse_duration
from registry.http.authz import require, visible
from registry.http.common import RequestError, check_consistency, read_object, reply, reply_result, store_of

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


@routes.put("/v1/session/create")
async def create(request: web.Request) -> web.Response:
    body = await read_object(request, SESSION_ALIASES, required=False)
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


def _sessions_result(request: web.Request, topic: str, keep) -> Result:
    store = store_of(request)
    own = store.topic_index(topic)
    body = visible(request, [s for _, s in sorted(store.sessions.items()) if keep(s)],
                   lambda who, s: who.allowed("session", s["Node"], "read"))
    return Result(body, own or store.topic_index("sessions"), own)


@routes.get("/v1/session/info/{session}")
async def info(request: web.Request) -> web.Response:
    check_consistency(request)
    store = store_of(request)
    sid = request.match_info["session"]
    topic = f"session:{sid}"
    result = await run_query(store, request.query, [topic],
                             lambda: _sessions_result(request, topic, lambda s: s["ID"] == sid))
    return reply_result(request, result)


@routes.get("/v1/session/list")
async def list_(request: web.Request) -> web.Response:
    check_consistency(request)
    store = store_of(request)
    result = await run_query(store, request.query, ["sessions"],
                             lambda: _sessions_result(request, "sessions", lambda s: True))
    return reply_result(request, result)


@routes.get("/v1/session/node/{node}")
async def node(request: web.Request) -> web.Response:
    check_consistency(request)
    store = store_of(request)
    name = request.match_info["node"]
    topic = f"session_node:{name}"
    result = await run_query(store, request.query, [topic],
                             lambda: _sessions_result(request, topic, lambda s: s["Node"] == name))
    return reply_result(request, result)
