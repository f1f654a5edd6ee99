"""The reads /v1/catalog and /v1/health share: ?node-meta and ?tag filters, and one-service / one-node reads.

Both endpoint families answer "the instances of service X" and "the records of node N" with the same
indexes and blocking topics and differ only in the body they build, so the read itself lives here once
and each endpoint passes the function that builds its body.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from aiohttp import web

from registry.blocking import Result
from registry.http.common import blocking_reply, indexed, store_of
from registry.store import Store

#: (node, service, checks): one service instance as Store.instances() lists it.
Instance = tuple[dict, dict, list[dict]]


def node_meta_filter(request: web.Request) -> dict[str, str]:
    """?node-meta=key:value (repeatable, AND)."""
    wanted = {}
    for item in request.query.getall("node-meta", []):
        key, _, value = item.partition(":")
        wanted[key] = value
    return wanted


def meta_matches(node: dict | None, wanted: dict[str, str]) -> bool:
    meta = (node or {}).get("Meta") or {}
    return all(meta.get(k) == v for k, v in wanted.items())


def has_tags(svc: dict, tags: list[str]) -> bool:
    """?tag filtering is case-insensitive in Consul (its state store lower-cases both sides)."""
    own = {t.lower() for t in svc["Tags"] or ()}
    return all(t.lower() in own for t in tags)


def service_index(store: Store, name: str) -> Result:
    """Report/own indexes for reads of one service (unknown service: the services table index)."""
    return indexed(store, f"service:{name}", "services")


async def service_read(request: web.Request, build: Callable[[str, list[Instance]], Any],
                       filter_roots: Collection[str] | None = None) -> web.Response:
    """The service's instances on nodes matching ?node-meta, turned into a body by `build(name, instances)`,
    reported at the service's index and blocking on its topic (and ?filter'ed, given `filter_roots`)."""
    store = store_of(request)
    name = request.match_info["service"]
    wanted = node_meta_filter(request)

    def compute() -> Result:
        result = service_index(store, name)
        result.body = build(name, [i for i in store.instances(name) if meta_matches(i[0], wanted)])
        return result

    return await blocking_reply(request, [f"service:{name}"], compute, filter_roots)


async def node_read(request: web.Request, build: Callable[[str], Any],
                    filter_roots: Collection[str] | None = None) -> web.Response:
    """`build(node name)`'s body, reported at the node's index (the nodes table's while the node is
    unknown) and blocking on its topic (and ?filter'ed, given `filter_roots`)."""
    store = store_of(request)
    name = request.match_info["node"]

    def compute() -> Result:
        return indexed(store, f"node:{name}", "nodes", build(name))

    return await blocking_reply(request, [f"node:{name}"], compute, filter_roots)
