"""Responses in the shapes Consul documents (api-docs/catalog, health, kv), written by hand.

They pin the templater's parsing to Consul's wire format, not to whatever our registry emits, so
the templater is known to work against a real Consul agent too.
"""

from __future__ import annotations

import base64


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


NODE_1 = {
    "ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": "foobar", "Address": "10.1.10.12",
    "Datacenter": "dc1", "TaggedAddresses": {"lan": "10.1.10.12", "wan": "10.1.10.12"},
    "Meta": {"instance_type": "t2.medium"}, "CreateIndex": 5, "ModifyIndex": 5,
}
NODE_2 = {
    "ID": "8f246b77-f3e1-ff88-5b48-8ec93abf3e05", "Node": "baz", "Address": "10.1.10.11",
    "Datacenter": "dc1", "TaggedAddresses": {"lan": "10.1.10.11", "wan": "10.1.10.11"},
    "Meta": {}, "CreateIndex": 6, "ModifyIndex": 6,
}

SERF_CHECK = {"Node": "foobar", "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
              "Notes": "", "Output": "", "ServiceID": "", "ServiceName": "", "ServiceTags": [],
              "Type": "", "CreateIndex": 5, "ModifyIndex": 5}


def _service(sid: str, port: int, address: str = "", tags: list[str] | None = None,
             meta: dict[str, str] | None = None, weights: dict[str, int] | None = None) -> dict:
    return {"ID": sid, "Service": "redis", "Tags": tags if tags is not None else ["primary"],
            "Address": address, "TaggedAddresses": {}, "Meta": meta or {"redis_version": "4.0"},
            "Port": port, "Weights": weights or {"Passing": 10, "Warning": 1}, "EnableTagOverride": False,
            "CreateIndex": 7, "ModifyIndex": 7}


def _check(node: str, sid: str, status: str, check_id: str | None = None) -> dict:
    return {"Node": node, "CheckID": check_id or f"service:{sid}", "Name": "Service 'redis' check",
            "Status": status, "Notes": "", "Output": "", "ServiceID": sid, "ServiceName": "redis",
            "ServiceTags": ["primary"], "Type": "ttl", "CreateIndex": 8, "ModifyIndex": 8}


# GET /v1/health/service/redis (no ?passing): instances in several states, deliberately unsorted.
HEALTH_SERVICE_REDIS = [
    {"Node": NODE_1, "Service": _service("redis2", 8001, "10.1.10.99"),
     "Checks": [SERF_CHECK, _check("foobar", "redis2", "warning")]},
    {"Node": NODE_2, "Service": _service("redis1", 8000, tags=[], weights={"Passing": 3, "Warning": 2}),
     "Checks": [dict(SERF_CHECK, Node="baz"), _check("baz", "redis1", "passing")]},
    {"Node": NODE_1, "Service": _service("redis1", 8000, meta={"role": "replica"}),
     "Checks": [SERF_CHECK, _check("foobar", "redis1", "passing")]},
    {"Node": NODE_1, "Service": _service("redis3", 8002),
     "Checks": [SERF_CHECK, _check("foobar", "redis3", "critical")]},
    {"Node": NODE_2, "Service": _service("redis4", 8003),
     "Checks": [dict(SERF_CHECK, Node="baz"), _check("baz", "redis4", "passing"),
                _check("baz", "redis4", "critical", "_service_maintenance:redis4")]},
]

# GET /v1/catalog/services
CATALOG_SERVICES = {"consul": [], "redis": [], "postgresql": ["primary", "secondary"]}

# GET /v1/catalog/nodes
CATALOG_NODES = [NODE_1, NODE_2]

# GET /v1/catalog/node/foobar
CATALOG_NODE = {
    "Node": NODE_1,
    "Services": {
        "consul": {"ID": "consul", "Service": "consul", "Tags": None, "Meta": {}, "Port": 8300,
                   "Address": "", "Weights": {"Passing": 1, "Warning": 1}},
        "redis": {"ID": "redis", "Service": "redis", "Tags": ["v1"], "Meta": {"redis_version": "4.0"},
                  "Port": 8000, "Address": "10.1.10.12", "Weights": {"Passing": 10, "Warning": 1}},
    },
}

# GET /v1/kv/my-key
KV_KEY = [{"CreateIndex": 100, "ModifyIndex": 200, "LockIndex": 200, "Key": "my-key", "Flags": 0,
           "Value": b64("dGVzdA and more"), "Session": "adf4238a-882b-9ddc-4a9d-5b6758e4159e"}]
KV_EMPTY_VALUE = [{"CreateIndex": 101, "ModifyIndex": 101, "LockIndex": 0, "Key": "empty", "Flags": 0,
                   "Value": None}]

# GET /v1/kv/haproxy/?recurse
KV_RECURSE = [
    {"Key": "haproxy/", "Value": None, "Flags": 0, "CreateIndex": 1, "ModifyIndex": 1, "LockIndex": 0},
    {"Key": "haproxy/backends/web", "Value": b64("balance roundrobin"), "Flags": 0, "CreateIndex": 3,
     "ModifyIndex": 3, "LockIndex": 0},
    {"Key": "haproxy/global", "Value": b64("maxconn 4096"), "Flags": 0, "CreateIndex": 2, "ModifyIndex": 2,
     "LockIndex": 0},
    {"Key": "haproxy/defaults", "Value": None, "Flags": 0, "CreateIndex": 4, "ModifyIndex": 4, "LockIndex": 0},
]
