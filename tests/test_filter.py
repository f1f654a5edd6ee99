"""?filter: the expression compiler (unit) and the list endpoints honouring it against a real agent."""

from __future__ import annotations

import consul
import pytest
import requests

from registry.filter import (
    CHECK_FIELDS,
    HEALTH_ENTRY_FIELDS,
    FilterError,
    apply_filter,
    compile_filter,
)
from tests.procs import AgentProcess

ENTRY = {
    "Node": {"Node": "n1", "Meta": {"rack": "r1", "dotted.key": "yes"}},
    "Service": {"Service": "web", "Tags": ["blue", "v2"], "Meta": {"version": "2"}, "Port": 8080,
                "EnableTagOverride": False, "Address": ""},
    "Checks": [{"CheckID": "serfHealth", "Status": "passing"}, {"CheckID": "service:web", "Status": "critical"}],
}


def matches(source: str, obj: dict = ENTRY) -> bool:
    return compile_filter(source)(obj)


# ---------------------------------------------------------------- operators


@pytest.mark.parametrize(("source", "expected"), [
    ('Service.Service == "web"', True),
    ("Service.Service == web", True),
    ("Service.Service == `web`", True),
    ('Service.Service != "web"', False),
    ('Service.Service != "db"', True),
    ("Service.Port == 8080", True),
    ('Service.Port == "8081"', False),
    ("Service.EnableTagOverride == false", True),
    ("Service.Address is empty", True),
    ("Service.Address is not empty", False),
    ("Service.Tags is not empty", True),
    ('Service.Meta.missing is empty', True),
    ('"blue" in Service.Tags', True),
    ('"red" in Service.Tags', False),
    ('"red" not in Service.Tags', True),
    ("blue in Service.Tags", True),
    ('Service.Tags contains "v2"', True),
    ('Service.Tags not contains "v2"', False),
    ('"version" in Service.Meta', True),
    ('Service.Service contains "e"', True),
    ('"eb" in Service.Service', True),
    ('Service.Service matches "^w.b$"', True),
    ('Service.Service not matches "^db"', True),
    ('Service.Meta.version == "2"', True),
    ('Node.Meta["rack"] == "r1"', True),
    ('Node.Meta["dotted.key"] == yes', True),
    ('Node.Meta["absent"] != "x"', True),
    ('Node.Meta["absent"] == "x"', False),
])
def test_every_operator(source: str, expected: bool) -> None:
    assert matches(source) is expected


def test_selector_through_a_list_matches_any_element_and_its_negation_none() -> None:
    assert matches("Checks.Status == critical")
    assert matches("Checks.Status == passing")
    assert not matches("Checks.Status == warning")
    assert matches("Checks.Status != warning")
    assert not matches("Checks.Status != critical")
    assert matches('"critical" in Checks.Status')


def test_selectors_are_case_sensitive() -> None:
    assert not matches('Service.service == "web"')


# ---------------------------------------------------------------- precedence and grouping


@pytest.mark.parametrize(("source", "expected"), [
    ("not Service.Port == 8080", False),
    ("not not Service.Port == 8080", True),
    # and binds tighter than or: (false and false) or true
    ('Service.Service == db and Service.Port == 1 or Service.Port == 8080', True),
    # ... and parentheses override it: false and (false or true)
    ('Service.Service == db and (Service.Port == 1 or Service.Port == 8080)', False),
    # `a and not b or c` == `(a and (not b)) or c`
    ('Service.Service == web and not Service.Port == 8080 or Service.Port == 1', False),
    ('Service.Service == web and not Service.Port == 1 or Service.Port == 1', True),
    ('((Service.Service == "web"))', True),
    ('not (Service.Service == "web" or Service.Port == 1)', False),
])
def test_precedence(source: str, expected: bool) -> None:
    assert matches(source) is expected


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("source", [
    "",
    "Service.Service",
    'Service.Service == ',
    'Service.Service === "web"',
    '(Service.Service == "web"',
    'Service.Service == "web")',
    'Service.Service == "web" and',
    'Service.Service is full',
    'Service.Meta[version] == "2"',
    'Service.Service matches "("',
    'Service.Service == "unterminated',
    "Service.Service == web $",
    "and == 1",
])
def test_bad_syntax_is_an_error(source: str) -> None:
    with pytest.raises(FilterError):
        compile_filter(source, HEALTH_ENTRY_FIELDS)


def test_unknown_first_selector_name_is_an_error() -> None:
    with pytest.raises(FilterError, match='Selector "Bogus" is not valid'):
        compile_filter("Bogus == 1", HEALTH_ENTRY_FIELDS)
    compile_filter("Status == passing", CHECK_FIELDS)


def test_apply_filter_keeps_list_entries_and_map_values_in_order() -> None:
    where = compile_filter("Status == passing")
    checks = [{"Status": "passing", "id": 1}, {"Status": "critical"}, {"Status": "passing", "id": 3}]
    assert apply_filter(where, checks) == [checks[0], checks[2]]
    assert apply_filter(where, {"b": checks[1], "a": checks[0]}) == {"a": checks[0]}


# ---------------------------------------------------------------- end to end


def _register(url: str, body: dict) -> None:
    assert requests.put(f"{url}/v1/agent/service/register", json=body, timeout=10).status_code == 200


def _get(url: str, path: str, expression: str) -> requests.Response:
    return requests.get(f"{url}{path}", params={"filter": expression}, timeout=10)


@pytest.fixture
def url(agent: AgentProcess) -> str:
    """Two instances of `web`: web1 (blue, version 2, critical TTL check) and web2 (green, version 1)."""
    _register(agent.url, {"Name": "web", "ID": "web1", "Tags": ["blue"], "Meta": {"version": "2"},
                          "Port": 8001, "Check": {"TTL": "30s"}})
    _register(agent.url, {"Name": "web", "ID": "web2", "Tags": ["green"], "Meta": {"version": "1"}, "Port": 8002})
    _register(agent.url, {"Name": "db", "ID": "db1", "Tags": ["primary"], "Port": 5432})
    return agent.url


def test_health_and_catalog_service_reads_filter(url: str) -> None:
    ids = [e["Service"]["ID"] for e in _get(url, "/v1/health/service/web", 'Service.Meta.version == "2"').json()]
    assert ids == ["web1"]
    ids = [e["Service"]["ID"] for e in _get(url, "/v1/health/service/web", "Checks.Status == critical").json()]
    assert ids == ["web1"]
    ids = [e["ServiceID"] for e in _get(url, "/v1/catalog/service/web", '"green" in ServiceTags').json()]
    assert ids == ["web2"]
    assert _get(url, "/v1/catalog/services", '"blue" in ServiceTags').json() == {"web": ["blue"]}
    assert _get(url, "/v1/catalog/services", "ServicePort == 5432").json() == {"db": ["primary"]}


def test_check_and_node_reads_filter(url: str) -> None:
    node = requests.get(f"{url}/v1/agent/self", timeout=10).json()["Config"]["NodeName"]
    assert [c["ServiceID"] for c in _get(url, "/v1/health/checks/web", "Status == critical").json()] == ["web1"]
    assert [c["CheckID"] for c in _get(url, f"/v1/health/node/{node}", 'ServiceID == ""').json()] == ["serfHealth"]
    assert [c["CheckID"] for c in _get(url, "/v1/health/state/any", "ServiceName == web").json()] == ["service:web1"]
    assert list(_get(url, "/v1/agent/checks", 'CheckID matches "^serf"').json()) == ["serfHealth"]
    assert [n["Node"] for n in _get(url, "/v1/catalog/nodes", f'Node == "{node}"').json()] == [node]
    assert _get(url, "/v1/catalog/nodes", 'Meta["nope"] == "x"').json() == []


def test_py_consul_agent_services_filter(url: str, agent: AgentProcess) -> None:
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    assert sorted(c.agent.services(filter_expr='Service == web and Meta.version != "2"')) == ["web2"]
    assert sorted(c.agent.services(filter_expr='Tags contains "primary" or Port == 8001')) == ["db1", "web1"]


def test_bad_filter_is_a_400_at_once_even_on_a_blocking_read(url: str) -> None:
    index = requests.get(f"{url}/v1/health/service/web", timeout=10).headers["X-Consul-Index"]
    resp = requests.get(f"{url}/v1/health/service/web", params={"filter": "Service.Port ==", "index": index,
                                                                 "wait": "60s"}, timeout=10)
    assert resp.status_code == 400
    assert resp.text.startswith("Failed to create boolean expression evaluator: ")
    resp = _get(url, "/v1/agent/services", "Bogus == 1")
    assert (resp.status_code, resp.text) == (400, 'Failed to create boolean expression evaluator: Selector "Bogus" '
                                                  'is not valid')
