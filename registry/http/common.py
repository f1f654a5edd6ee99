"""What every endpoint shares: Consul's reply shapes, errors, headers, blocking reads and body decoding."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from typing import Any

from aiohttp import web

from registry.blocking import Result, run_query
from registry.body import Body, RequestError, string_list, string_map, typed  # noqa: F401 - re-exported
from registry.filter import FilterError, Predicate, apply_filter, compile_filter
from registry.store import Store

JSON_TYPE = "application/json"


def text_error(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


def dumps(body: Any, pretty: bool = False) -> str:
    if pretty:
        return json.dumps(body, indent=4)
    return json.dumps(body, separators=(",", ":"))


def reply(request: web.Request, body: Any, index: int | None = None, status: int = 200) -> web.Response:
    """A JSON reply; `index` adds the read-metadata headers every Consul client expects."""
    resp = web.Response(status=status, text=dumps(body, "pretty" in request.query), content_type=JSON_TYPE)
    if index is not None:
        add_index_headers(resp, index)
    return resp


def reply_result(request: web.Request, result: Result, status: int = 200) -> web.Response:
    return reply(request, result.body, result.index, status)


def indexed(store: Store, topic: str, table: str, body: Any = None) -> Result:
    """A read's Result for one topic: it reports the topic's index, or its table's while the topic was never
    written, so a read of something unknown still gets a non-zero X-Consul-Index and can block on it."""
    own = store.topic_index(topic)
    return Result(body, own or store.topic_index(table), own)


async def blocking_reply(request: web.Request, topics: Iterable[str], compute: Callable[[], Result],
                         filter_roots: Collection[str] | None = None) -> web.Response:
    """Every blocking read ends the same way: answer now or park on its topics (?index, ?wait), then reply
    with the body and the index headers. With `filter_roots` (the fields of the body's entries) the read
    honours ?filter on its final, ACL-filtered body; the expression is checked before the read parks."""
    where = filter_predicate(request, filter_roots) if filter_roots is not None else None
    if where is not None:
        unfiltered = compute

        def compute() -> Result:
            result = unfiltered()
            result.body = apply_filter(where, result.body)
            return result

    return reply_result(request, await run_query(store_of(request), request.query, topics, compute))


def filter_predicate(request: web.Request, roots: Collection[str]) -> Predicate | None:
    """?filter compiled for entries with fields `roots`; None without one; Consul's 400 for a bad one."""
    source = request.query.get("filter", "")
    if not source.strip():
        return None
    try:
        return compile_filter(source, roots)
    except FilterError as exc:
        raise RequestError(400, f"Failed to create boolean expression evaluator: {exc.text}") from None


def add_index_headers(resp: web.StreamResponse, index: int) -> None:
    resp.headers["X-Consul-Index"] = str(max(index, 1))
    resp.headers["X-Consul-KnownLeader"] = "true"
    resp.headers["X-Consul-LastContact"] = "0"
    resp.headers["X-Consul-Effective-Consistency"] = "leader"


def empty_ok() -> web.Response:
    """Agent writes answer 200 with an empty body."""
    return web.Response(status=200)


def store_of(request: web.Request) -> Store:
    return request.app["store"]


def check_consistency(request: web.Request) -> None:
    query = request.query
    if "stale" in query and "consistent" in query:
        raise RequestError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
    dc = query.get("dc")
    if dc and dc != request.app["agent_info"].datacenter:
        raise RequestError(500, "No path to datacenter")


def flag(request: web.Request, name: str) -> bool:
    """Presence-only flags (?recurse, ?keys, ?raw ...): any value counts."""
    return name in request.query


def parse_bool_param(value: str) -> bool:
    """Go's strconv.ParseBool."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(value)


async def read_json(request: web.Request, required: bool = True) -> Any:
    """The request body as JSON, or Consul's 400 `Request decode failed: ...`."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise RequestError(400, "Request decode failed: EOF")
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"Request decode failed: {exc}") from None


async def read_object(request: web.Request, aliases: dict[str, str] | None = None,
                      required: bool = True) -> Body:
    data = await read_json(request, required)
    if data is None:
        return Body({}, aliases)
    if not isinstance(data, dict):
        raise RequestError(400, "Request decode failed: json: cannot unmarshal "
                                f"{type(data).__name__} into Go value of type object")
    return Body(data, aliases)


def uint_param(request: web.Request, name: str) -> int | None:
    """?cas / ?flags: Go's strconv.ParseUint, whose error text Consul returns with a 500."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
        if value < 0 or value >= 2**64 or not raw.isdigit():
            raise ValueError
    except ValueError:
        raise RequestError(500, f'strconv.ParseUint: parsing "{raw}": invalid syntax') from None
    return value
