"""Template functions, filters and n-pass dependency recording, on in-memory data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from templater.config import TemplateConfig
from templater.dependencies import (
    CatalogNodeQuery,
    CatalogNodesQuery,
    CatalogServicesQuery,
    Dependency,
    FileQuery,
    HealthServiceQuery,
    KVKeyQuery,
    KVPrefixQuery,
)
from templater.render import RenderResult, TemplateError, TemplateRenderer, sanitize
from tests import fixtures_consul as fx


class Data:
    """A DataSource backed by a dict: absent means "not answered yet"."""

    def __init__(self, values: dict[Dependency, Any] | None = None):
        self.values = dict(values or {})

    def lookup(self, dependency: Dependency) -> tuple[bool, Any]:
        return dependency in self.values, self.values.get(dependency)


def render(text: str, data: Data, **options: Any) -> RenderResult:
    renderer = TemplateRenderer(TemplateConfig(destination="out", contents=text, **options))
    renderer.compile()
    return renderer.render(data)


def redis() -> list:
    return HealthServiceQuery("redis").parse(fx.HEALTH_SERVICE_REDIS)


NESTED = """{% for s in services() %}
backend {{ s.name }}
{% for i in service(s.name) %}
  server {{ (i.node ~ "/" ~ i.id)|sanitize }} {{ i.address }}:{{ i.port }} weight {{ i.weights.passing }}
{% endfor %}
{% endfor %}
"""


def test_nested_loops_discover_dependencies_pass_by_pass() -> None:
    data = Data()
    first = render(NESTED, data)
    assert first.text is None and set(first.missing) == {CatalogServicesQuery()}
    data.values[CatalogServicesQuery()] = CatalogServicesQuery.parse({"redis": [], "web": []})
    second = render(NESTED, data)
    assert second.text is None and set(second.missing) == {HealthServiceQuery("redis"), HealthServiceQuery("web")}
    data.values[HealthServiceQuery("redis")] = redis()
    data.values[HealthServiceQuery("web")] = []
    third = render(NESTED, data)
    assert third.complete and third.used == {CatalogServicesQuery(), HealthServiceQuery("redis"),
                                              HealthServiceQuery("web")}
    assert third.text == ("backend redis\n  server baz_redis1 10.1.10.11:8000 weight 3\n"
                          "  server foobar_redis1 10.1.10.12:8000 weight 10\nbackend web\n")
    # A service removed from the catalog is no longer read, so no longer watched.
    data.values[CatalogServicesQuery()] = CatalogServicesQuery.parse({"web": []})
    assert render(NESTED, data).used == {CatalogServicesQuery(), HealthServiceQuery("web")}


def test_service_states_tag_and_services_tag_filter() -> None:
    query = HealthServiceQuery("redis", "primary", ("passing", "warning"))
    data = Data({query: query.parse(fx.HEALTH_SERVICE_REDIS),
                 CatalogServicesQuery(): CatalogServicesQuery.parse(fx.CATALOG_SERVICES)})
    result = render('{{ service("redis", tag="primary", state="warning,passing")|map(attribute="status")|join(",") }}'
                    ' {{ services("primary")|map(attribute="name")|join(",") }}', data)
    assert result.text == "passing,passing,warning postgresql"


def test_nodes_and_node() -> None:
    data = Data({CatalogNodesQuery(): CatalogNodesQuery.parse(fx.CATALOG_NODES),
                 CatalogNodeQuery("foobar"): CatalogNodeQuery.parse(fx.CATALOG_NODE),
                 CatalogNodeQuery("gone"): None})
    text = render('{% for n in nodes() %}{{ n.name }}={{ n.address }} {% endfor %}'
                  '{{ node("foobar").services|map(attribute="id")|join(",") }} {{ node("gone") is none }}', data).text
    assert text == "baz=10.1.10.11 foobar=10.1.10.12 consul,redis True"


def test_kv_functions() -> None:
    pairs = KVPrefixQuery("haproxy/").parse(fx.KV_RECURSE)
    data = Data({KVKeyQuery("a"): "alpha", KVKeyQuery("nokey"): None, KVPrefixQuery("haproxy/"): pairs})
    text = render('{{ key("a") }} {{ key_or_default("nokey", "dflt") }} {{ key_exists("nokey") }}|'
                  '{% for p in ls("haproxy") %}{{ p.key }}={{ p.value }};{% endfor %}|'
                  '{% for p in tree("/haproxy/") %}{{ p.path }};{% endfor %}', data).text
    assert text == ("alpha dflt False|defaults=;global=maxconn 4096;|"
                    "haproxy/backends/web;haproxy/defaults;haproxy/global;")


def test_missing_key_blocks_and_error_on_missing_key_fails_with_line() -> None:
    data = Data({KVKeyQuery("nokey"): None})
    blocked = render('a\n{{ key("nokey") }}\n', data)
    assert blocked.text is None and "does not exist" in blocked.missing[KVKeyQuery("nokey")]
    failed = render('a\n{{ key("nokey") }}\n', data, error_on_missing_key=True)
    assert failed.error is not None and failed.error.line == 2 and "'nokey' does not exist" in str(failed.error)
    # Before the first answer, even error_on_missing_key waits instead of failing.
    assert render('{{ key("nokey") }}', Data(), error_on_missing_key=True).error is None


def test_safe_ls_refuses_to_render_an_empty_prefix() -> None:
    data = Data({KVPrefixQuery("empty/"): []})
    assert render('{{ ls("empty")|length }}', data).text == "0"
    assert render('{{ safe_ls("empty")|length }}', data).text is None
    assert render('{{ safe_tree("empty/")|length }}', data).text is None


def test_filters() -> None:
    instances = redis()
    data = Data({HealthServiceQuery("redis", None, ("any",)): HealthServiceQuery("redis", None, ("any",))
                 .parse(fx.HEALTH_SERVICE_REDIS)})
    text = render('{% for tag, xs in service("redis", state="any")|by_tag|items %}{{ tag }}:{{ xs|length }} '
                  '{% endfor %}{% for v, xs in service("redis", state="any")|by_meta("role")|items %}'
                  '[{{ v }}]={{ xs|length }} {% endfor %}', data).text
    assert text == "primary:4 []=4 [replica]=1 "
    assert render('{{ {"b": 1, "a": [1]}|to_json }} {{ ("{\\"x\\": 2}"|parse_json).x }}', Data()).text == \
        '{"a": [1], "b": 1} 2'
    assert sanitize("web api/v1 (blue)#1") == "web_api_v1__blue__1"
    assert sanitize("node-1.dc:web_1") == "node-1.dc:web_1"
    assert instances[0].weights.passing == 3


def test_to_json_encodes_dataclasses() -> None:
    data = Data({HealthServiceQuery("redis"): redis()})
    text = render('{{ (service("redis")|first)|to_json }}', data).text
    assert '"weights": {"passing": 3, "warning": 2}' in text and '"node": "baz"' in text


def test_env_and_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TPL_TEST_VAR", "v1")
    path = tmp_path / "f.txt"
    data = Data({FileQuery(str(path)): "file text"})
    assert render(f'{{{{ env("TPL_TEST_VAR") }}}} {{{{ env("TPL_UNSET", "d") }}}} {{{{ file("{path}") }}}}',
                  data).text == "v1 d file text"
    assert render(f'{{{{ file("{path}") }}}}', Data({FileQuery(str(path)): None})).text is None


def test_strict_undefined_and_runtime_errors_carry_line() -> None:
    result = render("line1\n{{ nosuchvar }}\n", Data())
    assert isinstance(result.error, TemplateError) and result.error.line == 2
    assert "'nosuchvar' is undefined" in str(result.error)
    assert render('{{ service("x", state="healthy") }}', Data()).error.line == 1


def test_sandbox_blocks_python_internals() -> None:
    result = render("{{ ''.__class__.__mro__ }}", Data())
    assert result.error is not None


def test_errors_caused_by_missing_first_pass_data_wait_instead() -> None:
    result = render('{{ (key("cfg")|parse_json).port }}', Data())
    assert result.error is None and result.text is None and KVKeyQuery("cfg") in result.missing


def test_syntax_error_names_source_file_and_line(tmp_path: Path) -> None:
    source = tmp_path / "t.j2"
    source.write_text("ok\n{% for x in %}\n")
    renderer = TemplateRenderer(TemplateConfig(destination="out", source=str(source)))
    with pytest.raises(TemplateError) as info:
        renderer.compile()
    assert info.value.file == str(source) and info.value.line == 2


def test_partials_are_included_with_functions(tmp_path: Path) -> None:
    (tmp_path / "partials").mkdir()
    (tmp_path / "partials" / "server.j2").write_text("{% macro server(i) %}server {{ i.id|sanitize }}"
                                                      "{% endmacro %}")
    (tmp_path / "main.j2").write_text('{% import "partials/server.j2" as p %}'
                                      '{% for i in service("redis") %}{{ p.server(i) }};{% endfor %}\n')
    renderer = TemplateRenderer(TemplateConfig(destination="out", source=str(tmp_path / "main.j2")))
    renderer.compile()
    assert renderer.render(Data({HealthServiceQuery("redis"): redis()})).text == "server redis1;server redis1;"


def test_whitespace_control_and_trailing_newline() -> None:
    text = render("{% if true %}\n  a\n{% endif %}\nb\n", Data()).text
    assert text == "  a\nb\n"


class Everything:
    """Answers every query with fixture data, so documented examples can render."""

    def lookup(self, dependency: Dependency) -> tuple[bool, Any]:
        if isinstance(dependency, CatalogServicesQuery):
            return True, CatalogServicesQuery.parse(fx.CATALOG_SERVICES)
        if isinstance(dependency, HealthServiceQuery):
            return True, dependency.parse(fx.HEALTH_SERVICE_REDIS)
        if isinstance(dependency, CatalogNodesQuery):
            return True, CatalogNodesQuery.parse(fx.CATALOG_NODES)
        if isinstance(dependency, CatalogNodeQuery):
            return True, CatalogNodeQuery.parse(fx.CATALOG_NODE)
        if isinstance(dependency, KVPrefixQuery):
            return True, KVPrefixQuery("haproxy/").parse(fx.KV_RECURSE)
        if isinstance(dependency, KVKeyQuery):
            return True, '{"maxconn": 4096}'
        return True, "file text"


def test_every_documented_example_renders() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    doc = readme.split("## Writing templates", 1)[1].split("\n## ", 1)[0]
    examples = [block.split("```", 1)[0] for block in doc.split("```jinja\n")[1:]]
    assert len(examples) >= 17
    for example in examples:
        result = render(example, Everything())
        assert result.complete, (example, result.error, result.missing)


def test_speed_filters_service_meta_by_status_comma_list() -> None:
    from types import SimpleNamespace

    from templater.render import by_status, comma_list, service_meta

    a = SimpleNamespace(meta={"edge-host": "", "v": "1"}, status="critical")
    b = SimpleNamespace(meta={"edge-host": "b.local", "v": "2"}, status="passing")
    c = SimpleNamespace(meta={"edge-host": "c.local"}, status="passing")
    assert service_meta([a, b, c]) == {"edge-host": "b.local", "v": "1"}  # first non-empty value wins
    assert by_status([a, b, c]) == {"critical": [a], "passing": [b, c]}
    assert comma_list(" a, ,b ") == ["a", "b"]
