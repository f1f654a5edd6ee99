"""/v1/kv: Consul's key/value store (GET recurse/keys/raw, PUT cas/flags/acquire/release, DELETE)."""

from __future__ import annotations

import base64
import re
from urllib.parse import urlencode

from aiohttp import web

from registry.blocking import Result, run_query
from registry.http.authz import authz, denied, require, visible
from registry.http.common import (
    RequestError,
    add_index_headers,
    check_consistency,
    flag,
    reply,
    reply_result,
    store_of,
    uint_param,
)

routes = web.RouteTableDef()

MAX_VALUE_SIZE = 512 * 1024  # Consul's kv_max_value_size
_TRAVERSAL = re.compile(r"(\.\.|%2e%2e)(/|%2f)", re.IGNORECASE)


def _key(request: web.Request) -> str:
    key = request.match_info["key"]
    raw = request.raw_path.split("?", 1)[0]
    if key.startswith("/") or _TRAVERSAL.search(raw) or "../" in key or key != key.strip():
        raise RequestError(400, f"Invalid key name: {key!r} (keys may not start with '/', contain '../' "
                                "or have leading or trailing spaces)")
    return key


def _read(request: web.Request, key: str) -> tuple[list[str], callable]:
    """Topics and the compute function for one KV read (listings hold only what the token may read)."""
    store = store_of(request)
    if flag(request, "keys"):
        separator = request.query.get("separator", request.query.get("seperator", ""))
        return [f"kvp:{key}"], lambda: _keys_result(request, key, separator)
    if flag(request, "recurse"):
        return [f"kvp:{key}"], lambda: _recurse_result(request, key)
    require(request, "key", key, "read")
    return [f"kv:{key}"], lambda: _single_result(store, key)


def _single_result(store, key: str) -> Result:
    entry = store.kv.get(key)
    if entry is None:
        return Result(None, store.topic_index("kv"), store.kv_tombstones.get(key, 0))
    return Result([entry], entry["ModifyIndex"])


def _readable(request: web.Request, prefix: str, access: str) -> list[dict]:
    return visible(request, store_of(request).kv_prefix_items(prefix),
                   lambda who, entry: who.allowed("key", entry["Key"], access))


def _recurse_result(request: web.Request, prefix: str) -> Result:
    store = store_of(request)
    entries = _readable(request, prefix, "read")
    own = store.kv_prefix_index(prefix)
    return Result(entries or None, own or store.topic_index("kv"), own)


def _keys_result(request: web.Request, prefix: str, separator: str) -> Result:
    store = store_of(request)
    keys: list[str] = []
    for entry in _readable(request, prefix, "list"):
        key = entry["Key"]
        if separator:
            cut = key.find(separator, len(prefix))
            if cut >= 0:
                key = key[: cut + len(separator)]
        if not keys or keys[-1] != key:
            keys.append(key)
    own = store.kv_prefix_index(prefix)
    body = keys if keys or prefix == "" else None
    return Result(body, own or store.topic_index("kv"), own)


@routes.get("/v1/kv/{key:.*}")
async def get_kv(request: web.Request) -> web.Response:
    check_consistency(request)
    key = _key(request)
    if key == "" and not (flag(request, "recurse") or flag(request, "keys")):
        raise RequestError(400, "Missing key name")
    topics, compute = _read(request, key)
    result = await run_query(store_of(request), request.query, topics, compute)
    if result.body is None:
        resp = web.Response(status=404)
        add_index_headers(resp, result.index)
        return resp
    if flag(request, "raw") and not (flag(request, "recurse") or flag(request, "keys")):
        return _raw_reply(result)
    return reply_result(request, result)


def _raw_reply(result: Result) -> web.Response:
    value = result.body[0]["Value"]
    resp = web.Response(body=base64.b64decode(value) if value else b"", content_type="text/plain")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Content-Security-Policy"] = "sandbox"
    add_index_headers(resp, result.index)
    return resp


def _conflicting(request: web.Request, names: tuple[str, ...]) -> None:
    if sum(1 for name in names if name in request.query) > 1:
        encoded = urlencode(sorted(request.query.items()))
        raise RequestError(400, f"Conflicting flags: {encoded}\n")


def _refuse_oversized(size: int) -> None:
    """Consul's 413 for a value over kv_max_value_size."""
    if size > MAX_VALUE_SIZE:
        raise RequestError(413, f"Request body({size} bytes) too large, max size: {MAX_VALUE_SIZE} bytes. "
                                "See https://developer.hashicorp.com/docs/agent/config/config-files"
                                "#kv_max_value_size.")


@routes.put("/v1/kv/{key:.*}")
async def put_kv(request: web.Request) -> web.Response:
    key = _key(request)
    if key == "":
        raise RequestError(400, "Missing key name")
    _conflicting(request, ("cas", "acquire", "release"))
    _refuse_oversized(request.content_length or 0)
    require(request, "key", key, "write")
    flags = uint_param(request, "flags") or 0
    cas = uint_param(request, "cas")
    body = await request.read()
    _refuse_oversized(len(body))  # a chunked upload has no Content-Length to refuse up front
    value = base64.b64encode(body).decode() if body else None
    ok = await store_of(request).kv_put(key, value, flags=flags, cas=cas,
                                        acquire=request.query.get("acquire"),
                                        release=request.query.get("release"))
    return reply(request, ok)


@routes.delete("/v1/kv/{key:.*}")
async def delete_kv(request: web.Request) -> web.Response:
    key = _key(request)
    recurse = flag(request, "recurse")
    _conflicting(request, ("recurse", "cas"))
    if key == "" and not recurse:
        raise RequestError(400, "Missing key name")
    if recurse and not authz(request).prefix_writable("key", key):
        raise denied(authz(request), "key:write", key)
    require(request, "key", key, "write")
    ok = await store_of(request).kv_delete(key, recurse=recurse, cas=uint_param(request, "cas"))
    return reply(request, ok)
