"""ACL enforcement for HTTP requests: who is asking, may they, and which results they may see.

The middleware resolves the request's token once (`?token` > `X-Consul-Token` > `Authorization:
Bearer`); endpoints then call `require` before a write (403 with Consul's text, nothing changed) and
`visible` to filter listings (never a 403; `X-Consul-Results-Filtered-By-ACLs` says something was hidden).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from aiohttp import web

from registry.acl import ACLNotFound, ACLService, Authorizer
from registry.http.common import RequestError, text_error

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_secret(request: web.Request) -> str | None:
    if request.query.get("token"):
        return request.query["token"]
    if request.headers.get("X-Consul-Token"):
        return request.headers["X-Consul-Token"]
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


#: Endpoints Consul answers without resolving a token.
OPEN_PATHS = ("/v1/status/", "/v1/catalog/datacenters")


@web.middleware
async def acl_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    acl: ACLService = request.app["acl"]
    if acl.enabled and request.path.startswith("/v1/") and not request.path.startswith(OPEN_PATHS):
        try:
            request["authz"] = acl.resolve(request_secret(request))
        except ACLNotFound:
            response = text_error(403, "ACL not found")
            response.headers["X-Consul-Default-ACL-Policy"] = "allow" if acl.default_allow else "deny"
            return response
    else:
        request["authz"] = acl.resolve(None)
    response = await handler(request)
    if acl.enabled:
        response.headers["X-Consul-Default-ACL-Policy"] = "allow" if acl.default_allow else "deny"
        if request.get("acl_filtered") and not request["authz"].anonymous:
            response.headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    return response


def authz(request: web.Request) -> Authorizer:
    return request["authz"]


def denied(who: Authorizer, permission: str, name: str | None) -> RequestError:
    target = f' on "{name}"' if name is not None else ""
    if who.anonymous:
        return RequestError(403, f"Permission denied: anonymous token lacks permission '{permission}'{target}. "
                                 "The anonymous token is used implicitly when a request does not specify a token.")
    return RequestError(403, f"Permission denied: token with AccessorID '{who.accessor}' lacks permission "
                             f"'{permission}'{target}")


def require(request: web.Request, resource: str, name: str | None, access: str) -> None:
    """Raise Consul's 403 unless the token has `resource:access` on name (name None: a bare rule)."""
    who = authz(request)
    ok = who.bare_allowed(resource, access) if name is None else who.allowed(resource, name, access)
    if not ok:
        raise denied(who, f"{resource}:{access}", name)


def visible(request: web.Request, items: Iterable[T], keep: Callable[[Authorizer, T], bool]) -> list[T]:
    """The items this token may read; marks the request as filtered when something was hidden."""
    who = authz(request)
    if not who.enabled:
        return list(items)
    items = list(items)
    kept = [item for item in items if keep(who, item)]
    if len(kept) != len(items):
        request["acl_filtered"] = True
    return kept


def can_read_service(who: Authorizer, name: str) -> bool:
    return who.allowed("service", name, "read")


def can_read_node(who: Authorizer, name: str) -> bool:
    return who.allowed("node", name, "read")


def can_read_check(who: Authorizer, check: dict) -> bool:
    """A check is visible with node:read on its node and, for a service check, service:read."""
    if not can_read_node(who, check["Node"]):
        return False
    return not check.get("ServiceID") or can_read_service(who, check.get("ServiceName", ""))


def require_check_write(request: web.Request, node: str, check: dict, service_name: str | None = None) -> None:
    """A service's check needs service:write on the service; a node check, node:write on the node."""
    if check.get("ServiceID"):
        require(request, "service", service_name or check.get("ServiceName", ""), "write")
    else:
        require(request, "node", node, "write")


def require_overwrite(request: web.Request, store: object, node: str, service: dict | None,
                      checks: list[dict]) -> None:
    """A write may not replace a record the token could not write itself (Consul checks the old record
    too): reusing another service's ID, or a node check's ID, must not take it over."""
    if service is not None:
        old = store.services.get((node, service["ID"]))  # type: ignore[attr-defined]
        if old is not None and old["Service"] != service["Service"]:
            require(request, "service", old["Service"], "write")
    for check in checks:
        old = store.checks.get((node, check["CheckID"]))  # type: ignore[attr-defined]
        if old is not None:
            require_check_write(request, node, old)
