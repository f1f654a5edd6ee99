"""Service definitions as clients send them (agent register, catalog register, config files)."""

from __future__ import annotations

import re

from registry.body import Body, RequestError, string_list, string_map, typed

_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_META_PAIRS = 64
MAX_META_VALUE = 512


def validate_meta(meta: dict[str, str], what: str = "Service") -> None:
    """Consul's metadata rules; an operator sees the same error Consul would give."""
    if len(meta) > MAX_META_PAIRS:
        raise RequestError(400, f"Invalid {what} Meta: Node metadata cannot contain more than "
                                f"{MAX_META_PAIRS} key/value pairs")
    for key, value in meta.items():
        if not _META_KEY.match(key):
            raise RequestError(400, f"Invalid {what} Meta: Key contains invalid characters")
        if key.startswith("consul-"):
            raise RequestError(400, f"Invalid {what} Meta: Key prefix 'consul-' is reserved for internal use")
        if len(value) > MAX_META_VALUE:
            raise RequestError(400, f"Invalid {what} Meta: Value is too long (limit: {MAX_META_VALUE} characters)")


def _weights(body: Body) -> dict[str, int]:
    weights = body.sub("Weights")
    if weights is None:
        return {"Passing": 1, "Warning": 1}
    passing = typed(weights.get("Passing", 1), int, "Weights.Passing")
    warning = typed(weights.get("Warning", 1), int, "Weights.Warning")
    if passing < 1:
        raise RequestError(400, "Passing must be greater than 0")
    return {"Passing": passing, "Warning": warning}


def _tagged_addresses(value: object) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(400, "Request decode failed: TaggedAddresses must be an object")
    result = {}
    for tag, addr in value.items():
        if not isinstance(addr, dict):
            raise RequestError(400, "Request decode failed: TaggedAddresses values must be objects")
        item = Body(addr)
        result[tag] = {"Address": typed(item.get("Address", ""), str, "Address"),
                       "Port": typed(item.get("Port", 0), int, "Port")}
    return result


def parse_service(body: Body) -> dict:
    """A stored service record from a registration body (Name/Service, ID, Tags, Meta, ...)."""
    name = body.get("Name") or body.get("Service") or ""
    typed(name, str, "Name")
    if not name:
        raise RequestError(400, "Missing service name")
    address = typed(body.get("Address", ""), str, "Address")
    if address in ("0.0.0.0", "::", "[::]"):
        raise RequestError(400, "Invalid service address")
    port = typed(body.get("Port", 0), int, "Port")
    if not 0 <= port <= 65535:
        raise RequestError(400, "Invalid service port")
    meta = string_map(body.get("Meta"), "Meta")
    validate_meta(meta)
    service = {
        "ID": typed(body.get("ID") or name, str, "ID"), "Service": name,
        "Tags": string_list(body.get("Tags"), "Tags"), "Address": address, "Meta": meta, "Port": port,
        "Weights": _weights(body),
        "EnableTagOverride": bool(typed(body.get("EnableTagOverride", False), bool, "EnableTagOverride")),
    }
    tagged = _tagged_addresses(body.get("TaggedAddresses"))
    if tagged:
        service["TaggedAddresses"] = tagged
    for name_ in ("Kind", "Proxy", "Connect"):
        if body.get(name_):
            service[name_] = body.get(name_)
    return service
