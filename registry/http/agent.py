"""/v1/agent: the local agent's services and checks, self, members, maintenance and reload."""

from __future__ import annotations

from aiohttp import web

from registry import REVISION, VERSION
from registry.body import require_strings
from registry.checkdefs import CHECK_ALIASES, parse_check, parse_service_checks
from registry.filter import AGENT_SERVICE_FIELDS, CHECK_FIELDS, apply_filter
from registry.http.authz import (
    can_read_check,
    can_read_node,
    can_read_service,
    require,
    require_check_write,
    require_overwrite,
    visible,
)
from registry.http.common import (
    RequestError,
    empty_ok,
    filter_predicate,
    parse_bool_param,
    read_object,
    reply,
    store_of,
)
from registry.http.services import parse_service
from registry.http.views import agent_service, check_view

routes = web.RouteTableDef()

SERVICE_ALIASES = {"serviceid": "id"}
MAINT_DEFAULT_REASON = ("Maintenance mode is enabled for this service, but no reason was provided. "
                        "This is a default message.")
NODE_MAINT_DEFAULT_REASON = ("Maintenance mode is enabled for this node, but no reason was provided. "
                             "This is a default message.")


def _unknown_service(sid: str) -> RequestError:
    return RequestError(404, f'Unknown service ID "{sid}". Ensure that the service ID is passed, '
                             "not the service name.")


def _unknown_check(cid: str) -> RequestError:
    return RequestError(404, f'Unknown check ID "{cid}". Ensure that the check ID is passed, '
                             "not the check name.")


def _require_check_write(request: web.Request, check: dict) -> None:
    """Write on the check's service (or on this node), and on any check of that ID it would replace."""
    store = store_of(request)
    svc = _local_services(request).get(check.get("ServiceID") or "")
    require_check_write(request, store.node_name, check, svc["Service"] if svc else None)
    require_overwrite(request, store, store.node_name, None, [check])


def _local_services(request: web.Request) -> dict[str, dict]:
    store = store_of(request)
    return store.node_services.get(store.node_name, {})


@routes.put("/v1/agent/service/register")
async def register_service(request: web.Request) -> web.Response:
    replace = request.query.get("replace-existing-checks")
    if replace not in (None, "", "true"):
        raise RequestError(400, "Invalid value for replace-existing-checks")
    body = await read_object(request, SERVICE_ALIASES)
    store = store_of(request)
    service = parse_service(body)
    require(request, "service", service["Service"], "write")
    checks = parse_service_checks(body, service, store.node_name,
                                  request.app["agent_info"].enable_script_checks)
    require_overwrite(request, store, store.node_name, service, checks)
    await store.register_service(service, checks, replace is not None)
    return empty_ok()


@routes.put("/v1/agent/service/deregister/{service_id}")
async def deregister_service(request: web.Request) -> web.Response:
    sid = request.match_info["service_id"]
    svc = _local_services(request).get(sid)
    if svc is None:
        raise _unknown_service(sid)
    require(request, "service", svc["Service"], "write")
    await store_of(request).deregister_service(sid)
    return empty_ok()


@routes.get("/v1/agent/services")
async def services(request: web.Request) -> web.Response:
    dc = request.app["agent_info"].datacenter
    allowed = visible(request, sorted(_local_services(request).items()),
                      lambda who, item: can_read_service(who, item[1]["Service"]))
    body = {sid: agent_service(svc, dc) for sid, svc in allowed}
    where = filter_predicate(request, AGENT_SERVICE_FIELDS)
    return reply(request, body if where is None else apply_filter(where, body))


@routes.get("/v1/agent/service/{service_id}")
async def service(request: web.Request) -> web.Response:
    sid = request.match_info["service_id"]
    svc = _local_services(request).get(sid)
    if svc is None:
        raise RequestError(404, f"unknown service ID: {sid}")
    require(request, "service", svc["Service"], "read")
    view = agent_service(svc, request.app["agent_info"].datacenter)
    view["ContentHash"] = f"{svc['ModifyIndex']:016x}"
    return reply(request, view)


@routes.get("/v1/agent/checks")
async def checks(request: web.Request) -> web.Response:
    store = store_of(request)
    local = visible(request, sorted(store.node_checks.get(store.node_name, {}).items()),
                    lambda who, item: can_read_check(who, item[1]))
    body = {cid: check_view(c) for cid, c in local}
    where = filter_predicate(request, CHECK_FIELDS)
    return reply(request, body if where is None else apply_filter(where, body))


@routes.put("/v1/agent/check/register")
async def register_check(request: web.Request) -> web.Response:
    body = await read_object(request, CHECK_ALIASES)
    store = store_of(request)
    scripts = request.app["agent_info"].enable_script_checks
    check = parse_check(body, store.node_name, enable_script_checks=scripts)
    sid = check["ServiceID"]
    if sid and sid not in _local_services(request):
        raise RequestError(404, f'ServiceID "{sid}" does not exist')
    _require_check_write(request, check)
    await store.register_check(check)
    return empty_ok()


@routes.put("/v1/agent/check/deregister/{check_id}")
async def deregister_check(request: web.Request) -> web.Response:
    store = store_of(request)
    cid = request.match_info["check_id"]
    check = store.checks.get((store.node_name, cid))
    if check is None:
        raise _unknown_check(cid)
    _require_check_write(request, check)
    await store.deregister_check(store.node_name, cid)
    return empty_ok()


async def _ttl_update(request: web.Request, cid: str, status: str, output: str) -> web.Response:
    store = store_of(request)
    check = store.checks.get((store.node_name, cid))
    if check is None:
        raise _unknown_check(cid)
    _require_check_write(request, check)
    if check.get("Type") != "ttl":
        raise RequestError(500, f'CheckID "{cid}" does not have associated TTL')
    limit = (check.get("_spec") or {}).get("output_max_size", 4096)
    runner = request.app.get("checks")
    if runner is not None:
        runner.ttl_touched(cid)  # before the write: an expiry must not land between the two
    await store.update_check(store.node_name, cid, status, output[:limit])
    return empty_ok()


def _ttl_route(status: str):
    async def handler(request: web.Request) -> web.Response:
        note = request.query.get("note", "")
        return await _ttl_update(request, request.match_info["check_id"], status, note)
    return handler


routes.put("/v1/agent/check/pass/{check_id}")(_ttl_route("passing"))
routes.put("/v1/agent/check/warn/{check_id}")(_ttl_route("warning"))
routes.put("/v1/agent/check/fail/{check_id}")(_ttl_route("critical"))


@routes.put("/v1/agent/check/update/{check_id}")
async def update_check(request: web.Request) -> web.Response:
    body = await read_object(request)
    require_strings(body, "Status", "Output")
    status = body.get("Status", "")
    if status not in ("passing", "warning", "critical"):
        raise RequestError(400, f"Invalid check status: '{status}'")
    return await _ttl_update(request, request.match_info["check_id"], status, body.get("Output", ""))


def _enable_param(request: web.Request) -> bool:
    raw = request.query.get("enable")
    if raw is None or raw == "":
        raise RequestError(400, "Missing value for enable")
    try:
        return parse_bool_param(raw)
    except ValueError:
        raise RequestError(400, f'Invalid value for enable: "{raw}"') from None


def _maintenance_check(node: str, cid: str, name: str, notes: str, service: dict | None) -> dict:
    return {"Node": node, "CheckID": cid, "Name": name, "Status": "critical", "Notes": notes, "Output": "",
            "ServiceID": service["ID"] if service else "",
            "ServiceName": service["Service"] if service else "",
            "ServiceTags": list(service["Tags"]) if service else [], "Type": "maintenance", "Interval": "",
            "Timeout": "", "ExposedPort": 0, "Definition": {}}


@routes.put("/v1/agent/service/maintenance/{service_id}")
async def service_maintenance(request: web.Request) -> web.Response:
    enable = _enable_param(request)
    store = store_of(request)
    sid = request.match_info["service_id"]
    svc = _local_services(request).get(sid)
    if svc is None:
        raise _unknown_service(sid)
    require(request, "service", svc["Service"], "write")
    cid = f"_service_maintenance:{sid}"
    if enable:
        if (store.node_name, cid) in store.checks:
            return empty_ok()  # already in maintenance: Consul keeps the first reason
        reason = request.query.get("reason") or MAINT_DEFAULT_REASON
        await store.register_check(_maintenance_check(store.node_name, cid, "Service Maintenance Mode",
                                                      reason, svc))
    else:
        await store.deregister_check(store.node_name, cid)
    return empty_ok()


@routes.put("/v1/agent/maintenance")
async def node_maintenance(request: web.Request) -> web.Response:
    enable = _enable_param(request)
    store = store_of(request)
    require(request, "node", store.node_name, "write")
    if enable:
        if (store.node_name, "_node_maintenance") in store.checks:
            return empty_ok()
        reason = request.query.get("reason") or NODE_MAINT_DEFAULT_REASON
        await store.register_check(_maintenance_check(store.node_name, "_node_maintenance",
                                                      "Node Maintenance Mode", reason, None))
    else:
        await store.deregister_check(store.node_name, "_node_maintenance")
    return empty_ok()


def member(request: web.Request) -> dict:
    info = request.app["agent_info"]
    return {
        "Name": info.node_name, "Addr": info.advertise, "Port": 8301,
        "Tags": {"role": "consul", "dc": info.datacenter, "port": "8300", "build": f"{VERSION}:{REVISION}",
                 "vsn": "2", "vsn_min": "2", "vsn_max": "3", "id": info.node_id, "segment": "",
                 "bootstrap": "1", "expect": "1"},
        "Status": 1, "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
        "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
    }


@routes.get("/v1/agent/members")
async def members(request: web.Request) -> web.Response:
    entry = member(request)
    if request.query.get("wan"):
        entry = {**entry, "Name": f"{entry['Name']}.{request.app['agent_info'].datacenter}"}
    node = request.app["agent_info"].node_name
    return reply(request, visible(request, [entry], lambda who, _: can_read_node(who, node)))


def _check_counts(request: web.Request) -> dict[str, str]:
    runner = request.app.get("checks")
    kinds = runner.stats().get("kinds", {}) if runner is not None else {}
    return {"check_monitors": str(kinds.get("script", 0)), "check_ttls": str(kinds.get("ttl", 0)),
            "check_http": str(kinds.get("http", 0)), "check_tcp": str(kinds.get("tcp", 0))}


@routes.get("/v1/agent/self")
async def self_(request: web.Request) -> web.Response:
    info = request.app["agent_info"]
    require(request, "agent", info.node_name, "read")
    store = store_of(request)
    local_services = _local_services(request)
    config = {"Datacenter": info.datacenter, "PrimaryDatacenter": info.datacenter, "NodeName": info.node_name,
              "NodeID": info.node_id, "Revision": REVISION, "Server": True, "Version": VERSION,
              "BuildDate": "2025-01-01T00:00:00Z"}
    stats = {
        "agent": {"checks": str(len(store.node_checks.get(store.node_name, {}))),
                  "services": str(len(local_services)), **_check_counts(request)},
        "build": {"version": VERSION, "revision": REVISION, "prerelease": ""},
        "consul": {"server": "true", "leader": "true", "bootstrap": "true", "known_datacenters": "1",
                   "leader_addr": info.leader_addr},
        "raft": {"applied_index": str(store.index), "commit_index": str(store.index), "state": "Leader"},
    }
    return reply(request, {"Config": config, "DebugConfig": info.debug_config(), "Coord": None,
                           "Member": member(request), "Stats": stats, "Meta": {}, "xDS": None})


@routes.put("/v1/agent/reload")
async def reload(request: web.Request) -> web.Response:
    require(request, "agent", request.app["agent_info"].node_name, "write")
    reloader = request.app.get("reload")
    if reloader is not None:
        errors = await reloader()
        if errors:
            raise RequestError(500, "Failed reloading: " + "; ".join(errors))
    return empty_ok()


@routes.put("/v1/agent/leave")
async def leave(request: web.Request) -> web.Response:
    require(request, "agent", request.app["agent_info"].node_name, "write")
    return empty_ok()
