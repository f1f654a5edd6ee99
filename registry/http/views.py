"""Wire views of stored records: the exact JSON shapes Consul's endpoints return."""

from __future__ import annotations

_OPTIONAL_SERVICE_FIELDS = ("TaggedAddresses", "Kind", "Proxy", "Connect", "SocketPath", "Locality")
_EMPTY_PROXY = {"Mode": "", "MeshGateway": {}, "Expose": {}}


def agent_service(svc: dict, datacenter: str) -> dict:
    """/v1/agent/services and /v1/agent/service/:id: optional fields only when set."""
    view = {"ID": svc["ID"], "Service": svc["Service"], "Tags": list(svc["Tags"]), "Meta": dict(svc["Meta"]),
            "Port": svc["Port"], "Address": svc["Address"], "Weights": dict(svc["Weights"]),
            "EnableTagOverride": svc["EnableTagOverride"], "Datacenter": datacenter}
    for name in _OPTIONAL_SERVICE_FIELDS:
        if svc.get(name):
            view[name] = svc[name]
    return view


def node_service(svc: dict) -> dict:
    """A service as nested in /v1/catalog/node/:node and /v1/health/service/:name."""
    view = {"ID": svc["ID"], "Service": svc["Service"], "Tags": list(svc["Tags"]),
            "Address": svc["Address"], "Meta": dict(svc["Meta"]), "Port": svc["Port"],
            "Weights": dict(svc["Weights"]), "EnableTagOverride": svc["EnableTagOverride"]}
    if svc.get("TaggedAddresses"):
        view["TaggedAddresses"] = svc["TaggedAddresses"]
    if svc.get("Kind"):
        view["Kind"] = svc["Kind"]
    view["Proxy"] = svc.get("Proxy") or dict(_EMPTY_PROXY)
    view["Connect"] = svc.get("Connect") or {}
    view["CreateIndex"] = svc["CreateIndex"]
    view["ModifyIndex"] = svc["ModifyIndex"]
    return view


def catalog_service(node: dict, svc: dict) -> dict:
    """One entry of /v1/catalog/service/:name (node fields flattened beside Service* fields)."""
    return {
        "ID": node.get("ID", ""), "Node": node["Node"], "Address": node["Address"],
        "Datacenter": node["Datacenter"], "TaggedAddresses": node.get("TaggedAddresses") or {},
        "NodeMeta": node.get("Meta") or {}, "ServiceKind": svc.get("Kind", ""), "ServiceID": svc["ID"],
        "ServiceName": svc["Service"], "ServiceTags": list(svc["Tags"]), "ServiceAddress": svc["Address"],
        "ServiceTaggedAddresses": svc.get("TaggedAddresses") or {}, "ServiceWeights": dict(svc["Weights"]),
        "ServiceMeta": dict(svc["Meta"]), "ServicePort": svc["Port"], "ServiceSocketPath": "",
        "ServiceEnableTagOverride": svc["EnableTagOverride"],
        "ServiceProxy": svc.get("Proxy") or dict(_EMPTY_PROXY), "ServiceConnect": svc.get("Connect") or {},
        "ServiceLocality": None, "CreateIndex": svc["CreateIndex"], "ModifyIndex": svc["ModifyIndex"],
    }


def health_entry(node: dict, svc: dict, checks: list[dict]) -> dict:
    """One entry of /v1/health/service/:name: Node, Service, Checks ([] never null)."""
    return {"Node": node, "Service": node_service(svc), "Checks": checks}


def check_view(check: dict) -> dict:
    """A check as every endpoint shows it (internal keys starting with '_' hidden)."""
    return {k: v for k, v in check.items() if not k.startswith("_")}
