"""The HTTP API: one module per Consul endpoint family, assembled into one aiohttp application."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from registry.acl import ACLService
from registry.blocking import QueryError
from registry.http import acl as acl_endpoints
from registry.http import agent, catalog, health, kv, session, status
from registry.http.authz import acl_middleware
from registry.http.common import RequestError, text_error
from registry.store import Store, StoreError

log = logging.getLogger("registry.http")

#: Every request body is capped (KV values at Consul's 512 KiB; nothing else needs more).
MAX_BODY = 512 * 1024 + 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def consul_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into Consul's status and plain-text body; nothing escapes as a crash."""
    try:
        response = await handler(request)
        if request.method == "GET":
            await request.app["store"].wait_durable()
        return response
    except (RequestError, StoreError) as exc:
        return text_error(exc.status, exc.text)
    except QueryError as exc:
        return text_error(400, exc.text)
    except web.HTTPMethodNotAllowed as exc:
        allow = ", ".join(sorted(exc.allowed_methods | {"OPTIONS"}))
        if request.method == "OPTIONS":
            return web.Response(status=200, headers={"Allow": allow})
        resp = text_error(405, f"method {request.method} not allowed")
        resp.headers["Allow"] = allow
        return resp
    except web.HTTPNotFound:
        return web.Response(status=404)
    except web.HTTPRequestEntityTooLarge as exc:
        return text_error(413, f"Request body too large, max size: {MAX_BODY} bytes ({exc.text})")
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug answers 500, the agent keeps serving
        log.exception("unhandled error on %s %s", request.method, request.path)
        return text_error(500, f"internal error: {type(exc).__name__}")


async def index(request: web.Request) -> web.Response:
    return web.Response(text="Consul Agent: edgestack registry", content_type="text/plain")


async def acl_disabled(request: web.Request) -> web.Response:
    return text_error(401, "ACL support disabled")


def build_app(store: Store, agent_info: object, acl: ACLService) -> web.Application:
    """The application for one agent: store, agent info and ACLs ride on the app object."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[acl_middleware, consul_errors])
    app["store"] = store
    app["agent_info"] = agent_info
    app["acl"] = acl
    for module in (agent, catalog, health, kv, session, status):
        app.router.add_routes(module.routes)
    if acl.enabled:
        app.router.add_routes(acl_endpoints.routes)
    else:
        app.router.add_route("*", "/v1/acl/{tail:.*}", acl_disabled)
    app.router.add_get("/", index)
    return app
