"""/v1/acl: bootstrap, tokens and policies (only mounted while ACLs are enabled; else 401)."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from registry.acl import (
    ANONYMOUS_ACCESSOR,
    MANAGEMENT_POLICY_ID,
    ACLService,
    RuleError,
    new_token,
    parse_rules,
    token_hash,
)
from registry.durations import DurationError, format_duration, parse_duration
from registry.http.authz import authz, require
from registry.http.common import Body, RequestError, read_object, reply

routes = web.RouteTableDef()


def _acl(request: web.Request) -> ACLService:
    return request.app["acl"]


def token_view(token: dict[str, Any], show_secret: bool = True) -> dict[str, Any]:
    view = {k: v for k, v in token.items() if not k.startswith("_")}
    if not show_secret:
        view["SecretID"] = "<hidden>"
    return view


def policy_view(policy: dict[str, Any], with_rules: bool = True) -> dict[str, Any]:
    view = dict(policy)
    if not with_rules:
        view.pop("Rules", None)
    return view


@routes.put("/v1/acl/bootstrap")
async def bootstrap(request: web.Request) -> web.Response:
    acl = _acl(request)
    store = request.app["store"]
    done_at = store.meta.get("acl_bootstrap_index")
    if acl.initial_management or done_at:
        reset = done_at or store.index
        raise RequestError(403, f"Permission denied: ACL bootstrap no longer allowed (reset index: {reset})")
    token = await acl.save_token(new_token("Bootstrap Token (Global Management)", acl.management_link()))
    await store.put_record("meta", "acl_bootstrap_index", token["CreateIndex"], "meta")
    return reply(request, {"ID": token["SecretID"], **token_view(token)})


def _policy_links(acl: ACLService, body: Body) -> list[dict[str, str]]:
    links = []
    for link in body.get("Policies") or []:
        item = Body(link) if isinstance(link, dict) else None
        if item is None:
            raise RequestError(400, "Request decode failed: Policies must be objects")
        policy = acl.store.acl_policies.get(item.get("ID", "")) or acl.policy_by_name(item.get("Name", ""))
        if policy is None:
            raise RequestError(400, f"No such ACL policy with ID \"{item.get('ID') or item.get('Name')}\"")
        links.append({"ID": policy["ID"], "Name": policy["Name"]})
    return links


def _expiration_ttl(acl: ACLService, raw: object) -> float | None:
    """ExpirationTTL within [token_min_expiration_ttl (1m), token_max_expiration_ttl (24h)], as Consul."""
    if not raw:
        return None
    try:
        ttl = parse_duration(raw)
    except DurationError as exc:
        raise RequestError(400, f"Request decode failed: {exc}") from None
    if not acl.min_ttl <= ttl <= acl.max_ttl:
        raise RequestError(400, f"Token Expiration TTL '{raw}' should be between "
                                f"{format_duration(acl.min_ttl)} and {format_duration(acl.max_ttl)}")
    return ttl


@routes.put("/v1/acl/token")
async def create_token(request: web.Request) -> web.Response:
    require(request, "acl", None, "write")
    acl = _acl(request)
    body = await read_object(request)
    ttl = _expiration_ttl(acl, body.get("ExpirationTTL"))
    secret = body.get("SecretID")
    if secret and acl.find_secret(secret):
        raise RequestError(400, "Invalid Token: SecretID is already in use")
    token = new_token(body.get("Description", ""), _policy_links(acl, body), secret, body.get("AccessorID"), ttl)
    return reply(request, token_view(await acl.save_token(token)))


def _found(record: dict[str, Any] | None) -> dict[str, Any]:
    """Consul answers a token or policy that does not exist with 403 "ACL not found", never 404."""
    if record is None:
        raise RequestError(403, "ACL not found")
    return record


@routes.get("/v1/acl/token/self")
async def token_self(request: web.Request) -> web.Response:
    return reply(request, token_view(_found(_acl(request).store.acl_tokens.get(authz(request).accessor))))


def _token(request: web.Request) -> dict[str, Any]:
    return _found(_acl(request).store.acl_tokens.get(request.match_info["accessor"]))


@routes.get("/v1/acl/token/{accessor}")
async def read_token(request: web.Request) -> web.Response:
    require(request, "acl", None, "read")
    who = authz(request)
    return reply(request, token_view(_token(request), who.bare_allowed("acl", "write")))


@routes.put("/v1/acl/token/{accessor}")
async def update_token(request: web.Request) -> web.Response:
    require(request, "acl", None, "write")
    acl = _acl(request)
    token = _token(request)
    body = await read_object(request)
    if body.get("SecretID") and body.get("SecretID") != token["SecretID"]:
        raise RequestError(400, "Cannot update a token's SecretID")
    updated = {**token, "Description": body.get("Description", token["Description"]),
               "Policies": _policy_links(acl, body) if body.has("Policies") else token["Policies"]}
    updated["Hash"] = token_hash(updated)
    return reply(request, token_view(await acl.save_token(updated)))


@routes.delete("/v1/acl/token/{accessor}")
async def delete_token(request: web.Request) -> web.Response:
    require(request, "acl", None, "write")
    token = _token(request)
    if token["AccessorID"] == ANONYMOUS_ACCESSOR:
        raise RequestError(403, "Permission denied: Deletion of the builtin anonymous token is not permitted")
    await request.app["store"].put_record("acl_tokens", token["AccessorID"], None, "acl")
    return reply(request, True)


@routes.get("/v1/acl/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    require(request, "acl", None, "read")
    show = authz(request).bare_allowed("acl", "write")
    tokens = sorted(_acl(request).store.acl_tokens.values(), key=lambda t: t["CreateIndex"])
    return reply(request, [token_view(t, show) for t in tokens])


def _policy_record(acl: ACLService, body: Body, policy_id: str) -> dict[str, Any]:
    name = body.get("Name", "")
    if not name:
        raise RequestError(400, "Invalid Policy: no Name is set")
    other = acl.policy_by_name(name)
    if other is not None and other["ID"] != policy_id:
        raise RequestError(400, f"Invalid Policy: A Policy with Name \"{name}\" already exists")
    rules = body.get("Rules", "")
    try:
        parse_rules(rules)
    except RuleError as exc:
        raise RequestError(400, f"Invalid Policy: {exc}") from None
    return {"ID": policy_id, "Name": name, "Description": body.get("Description", ""), "Rules": rules,
            "Datacenters": body.get("Datacenters")}


@routes.put("/v1/acl/policy")
async def create_policy(request: web.Request) -> web.Response:
    require(request, "acl", None, "write")
    acl = _acl(request)
    body = await read_object(request)
    record = _policy_record(acl, body, str(uuid.uuid4()))
    return reply(request, policy_view(await acl.save_policy(record)))


def _policy(request: web.Request, by_name: bool = False) -> dict[str, Any]:
    acl = _acl(request)
    if by_name:
        return _found(acl.policy_by_name(request.match_info["name"]))
    return _found(acl.store.acl_policies.get(request.match_info["policy"]))


@routes.get("/v1/acl/policy/name/{name}")
async def read_policy_by_name(request: web.Request) -> web.Response:
    require(request, "acl", None, "read")
    return reply(request, policy_view(_policy(request, by_name=True)))


@routes.get("/v1/acl/policy/{policy}")
async def read_policy(request: web.Request) -> web.Response:
    require(request, "acl", None, "read")
    return reply(request, policy_view(_policy(request)))


def _changeable_policy(request: web.Request, refused: str) -> dict[str, Any]:
    """The policy a write names, after acl:write; the builtin global-management policy is refused (403)."""
    require(request, "acl", None, "write")
    policy = _policy(request)
    if policy["ID"] == MANAGEMENT_POLICY_ID:
        raise RequestError(403, f"Permission denied: {refused} is not permitted")
    return policy


@routes.put("/v1/acl/policy/{policy}")
async def update_policy(request: web.Request) -> web.Response:
    policy = _changeable_policy(request, "changing the rules of the builtin global-management policy")
    body = await read_object(request)
    record = _policy_record(_acl(request), body, policy["ID"])
    return reply(request, policy_view(await _acl(request).save_policy(record)))


@routes.delete("/v1/acl/policy/{policy}")
async def delete_policy(request: web.Request) -> web.Response:
    policy = _changeable_policy(request, "Deletion of the builtin global-management policy")
    await request.app["store"].put_record("acl_policies", policy["ID"], None, "acl")
    return reply(request, True)


@routes.get("/v1/acl/policies")
async def list_policies(request: web.Request) -> web.Response:
    require(request, "acl", None, "read")
    policies = sorted(_acl(request).store.acl_policies.values(), key=lambda p: p["CreateIndex"])
    return reply(request, [policy_view(p, with_rules=False) for p in policies])
