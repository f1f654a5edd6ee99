"""/v1/status: the single server is its own leader and only peer."""

from __future__ import annotations

from aiohttp import web

from registry.http.common import reply

routes = web.RouteTableDef()


@routes.get("/v1/status/leader")
async def leader(request: web.Request) -> web.Response:
    return reply(request, request.app["agent_info"].leader_addr)


@routes.get("/v1/status/peers")
async def peers(request: web.Request) -> web.Response:
    return reply(request, [request.app["agent_info"].leader_addr])
