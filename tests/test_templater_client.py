"""The templater's client and parsing, against responses in Consul's documented shapes.

The wire-level tests use a tiny in-process HTTP server that records what the client sent (token
header, blocking parameters) and answers with fixed statuses; they test the client, not a registry.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from templater.client import ConsulClient, PermissionDenied, RegistryUnavailable, next_index
from templater.config import RetryConfig, normalize_address
from templater.dependencies import (
    CatalogNodeQuery,
    CatalogNodesQuery,
    CatalogServicesQuery,
    HealthServiceQuery,
    KVKeyQuery,
    KVPrefixQuery,
    aggregated_status,
    parse_states,
)
from tests import fixtures_consul as fx
from tests.procs import free_port


def test_health_service_passing_filter_sorts_and_falls_back_to_node_address() -> None:
    instances = HealthServiceQuery("redis").parse(fx.HEALTH_SERVICE_REDIS)
    assert [(i.node, i.id) for i in instances] == [("baz", "redis1"), ("foobar", "redis1")]
    baz = instances[0]
    assert baz.address == "10.1.10.11" and baz.node_address == "10.1.10.11"
    assert baz.port == 8000 and baz.tags == [] and baz.status == "passing"
    assert (baz.weights.passing, baz.weights.warning) == (3, 2)
    assert instances[1].meta == {"role": "replica"} and instances[1].node_meta == {"instance_type": "t2.medium"}
    assert [c["CheckID"] for c in baz.checks] == ["serfHealth", "service:redis1"]


def test_health_service_states_are_or_ed_and_any_keeps_all() -> None:
    def ids(states: str) -> list[str]:
        return [i.id for i in HealthServiceQuery("redis", None, parse_states(states)).parse(fx.HEALTH_SERVICE_REDIS)]

    assert ids("warning,passing") == ["redis1", "redis1", "redis2"]
    assert ids("critical") == ["redis3"]
    assert ids("maintenance") == ["redis4"]
    assert len(ids("any")) == 5
    instance = HealthServiceQuery("redis", None, ("any",)).parse(fx.HEALTH_SERVICE_REDIS)[3]
    assert instance.id == "redis2" and instance.address == "10.1.10.99" and instance.status == "warning"


def test_states_parse_and_share_one_dependency() -> None:
    assert parse_states("warning, passing") == parse_states(["passing", "warning"]) == ("passing", "warning")
    assert HealthServiceQuery("a", None, parse_states("passing")) == HealthServiceQuery("a")
    with pytest.raises(ValueError, match="unknown health state 'healthy'"):
        parse_states("healthy")


def test_aggregated_status_precedence() -> None:
    assert aggregated_status([]) == "passing"
    assert aggregated_status([{"Status": "warning"}, {"Status": "passing"}]) == "warning"
    assert aggregated_status([{"Status": "warning"}, {"Status": "critical"}]) == "critical"
    assert aggregated_status([{"CheckID": "_node_maintenance", "Status": "critical"}]) == "maintenance"


def test_catalog_services_nodes_and_node() -> None:
    services = CatalogServicesQuery.parse(fx.CATALOG_SERVICES)
    assert [(s.name, s.tags) for s in services] == [("consul", []), ("postgresql", ["primary", "secondary"]),
                                                    ("redis", [])]
    nodes = CatalogNodesQuery.parse(fx.CATALOG_NODES)
    assert [n.name for n in nodes] == ["baz", "foobar"]
    assert nodes[1].tagged_addresses == {"lan": "10.1.10.12", "wan": "10.1.10.12"}
    assert nodes[1].datacenter == "dc1" and nodes[1].meta == {"instance_type": "t2.medium"}
    node = CatalogNodeQuery("foobar").parse(fx.CATALOG_NODE)
    assert node is not None and node.node.address == "10.1.10.12"
    assert [(s.id, s.tags, s.port) for s in node.services] == [("consul", [], 8300), ("redis", ["v1"], 8000)]
    assert CatalogNodeQuery("nope").parse(None) is None


def test_kv_values_and_prefixes() -> None:
    assert KVKeyQuery("my-key").parse(fx.KV_KEY) == "dGVzdA and more"
    assert KVKeyQuery("empty").parse(fx.KV_EMPTY_VALUE) == ""
    assert KVKeyQuery("missing").parse(None) is None
    pairs = KVPrefixQuery("haproxy/").parse(fx.KV_RECURSE)
    assert [(p.key, p.path, p.value) for p in pairs] == [
        ("backends/web", "haproxy/backends/web", "balance roundrobin"),
        ("defaults", "haproxy/defaults", ""), ("global", "haproxy/global", "maxconn 4096")]


def test_index_rules() -> None:
    assert next_index(0, 0) == 1
    assert next_index(5, 9) == 9
    assert next_index(9, 9) == 9
    assert next_index(9, 3) == 0  # went backwards: the registry's state was reset, start over


@pytest.mark.parametrize("given,expected", [
    ("127.0.0.1:8500", "http://127.0.0.1:8500"), ("http://10.0.0.1:8500/", "http://10.0.0.1:8500"),
    ("https://consul.example:8501", "https://consul.example:8501"), ("", "http://127.0.0.1:8500")])
def test_address_with_or_without_scheme(given: str, expected: str) -> None:
    assert normalize_address(given) == expected


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the status in the class attribute; remembers path and headers."""

    status = 200
    seen: list[tuple[str, dict[str, str]]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).seen.append((self.path, dict(self.headers)))
        body = json.dumps({"consul": []}).encode() if self.status == 200 else b"Permission denied"
        self.send_response(self.status)
        self.send_header("X-Consul-Index", "42")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Recorder", (_Recorder,), {"seen": [], "status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_blocking_read_sends_index_wait_stale_and_token_header(recorder, caplog) -> None:
    address, handler = recorder
    client = ConsulClient(address, token="s3cret-token")
    with caplog.at_level(logging.DEBUG):
        result = client.get("catalog/services", index=7, wait=60)
    assert result.index == 42 and result.data == {"consul": []}
    path, headers = handler.seen[0]
    assert path.startswith("/v1/catalog/services?")
    assert "index=7" in path and "wait=60000ms" in path and "stale" in path
    assert headers["X-Consul-Token"] == "s3cret-token"
    assert "s3cret-token" not in path and "s3cret-token" not in repr(client)
    assert "s3cret-token" not in caplog.text


def test_permission_denied_is_reported_clearly(recorder) -> None:
    address, handler = recorder
    handler.status = 403
    client = ConsulClient(address, retry=RetryConfig(attempts=1))
    with pytest.raises(PermissionDenied, match=r"permission denied reading /v1/kv/secret.*token"):
        client.get("kv/secret", allow_404=True)


def test_unreachable_registry_retries_with_backoff_then_gives_up_when_bounded() -> None:
    client = ConsulClient(f"127.0.0.1:{free_port()}", retry=RetryConfig(attempts=3, backoff=0.01, max_backoff=0.02))
    retries: list[float] = []
    client.on_retry = lambda path, exc, delay: retries.append(delay)
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        client.get("catalog/services")
    assert len(retries) == 2 and all(0 < d <= 0.02 for d in retries)


def test_view_reports_only_real_changes() -> None:
    import copy

    from templater.watcher import View

    dependency = HealthServiceQuery("redis")
    view = View(dependency, ConsulClient("127.0.0.1:1"), 60, lambda d: None, lambda d, e: None)
    first = dependency.parse(fx.HEALTH_SERVICE_REDIS)
    assert view._accept(first, 10) and view.index == 10
    assert not view._accept(first, 10)  # same index: a timed-out long-poll
    assert not view._accept(dependency.parse(fx.HEALTH_SERVICE_REDIS), 11)  # new index, same data
    rerun = copy.deepcopy(fx.HEALTH_SERVICE_REDIS)
    for entry in rerun:
        for check in entry["Checks"]:
            check["Output"], check["ModifyIndex"] = "HTTP GET: 200 OK at 12:00:01", 12
    assert not view._accept(dependency.parse(rerun), 12)  # only check output changed
    assert view.value[0].checks[1]["Output"].endswith("12:00:01")  # ...but the value is kept fresh
    rerun[1]["Checks"][1]["Status"] = "critical"
    assert view._accept(dependency.parse(rerun), 13)  # a health change is a change
    assert not view._accept(dependency.parse(rerun), 5) and view.index == 0  # index went back: reset
