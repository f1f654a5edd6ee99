"""The shipped templates: rendered by the templater's own sandboxed environment from fixed catalogs,
checked by the real `haproxy -c`, and served by a real HAProxy in front of real HTTP backends."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from templater.config import haproxy_variables
from templater.haproxy import HAProxyController
from templater.haproxy.model import diff_models, parse_config
from tests.procs import free_port
from tests.test_haproxy_support import (
    HAPROXY,
    Backend,
    FixedCatalog,
    Metrics,
    Settings,
    instance,
    render,
    short_dir,
)

log = logging.getLogger("test.haproxy.templates")


def haproxy_check(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "check.cfg"
    path.write_text(text)
    return subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)


def catalog(kv: dict[str, str] | None = None) -> FixedCatalog:
    return FixedCatalog({
        "web": [instance("node-1", "web-1", "web", 9001, meta={"edge-host": "Web.Local, www.web.local",
                                                               "edge-path": "/api/, /v1/x"}),
                instance("node-2", "web-2", "web", 9002, status="critical"),
                instance("node-2", "web@3", "web", 9003, weight=1000, address="::1")],
        "db": [instance("node-1", "db1", "db", 5432, meta={"edge-mode": "tcp", "edge-port": "15432"})],
        "consul": [instance("node-1", "consul", "consul", 8300)],
        "root": [instance("node-1", "root1", "root", 9100, meta={"edge-path": "/", "edge-balance": "leastconn"})],
        "down": [instance("node-1", "down1", "down", 9101, status="critical",
                          meta={"edge-host": "down.local\nbackend evil"})],
    }, kv)


def test_rendered_config_is_valid_and_has_the_documented_shape(tmp_path: Path):
    text = render("haproxy.cfg.j2", catalog(), {"http_port": 18080, "stats_port": 18404})
    check = haproxy_check(text, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    model = parse_config(text)
    assert set(model.backends) == {"web", "db", "root", "down", "edge.unrouted"}      # no `consul`
    web = model.backends["web"].servers
    assert set(web) == {"node-1-web-1", "node-2-web_3"}                 # passing only, sanitized
    assert web["node-2-web_3"].addr == "::1" and web["node-2-web_3"].weight == 256   # clamped
    assert model.backends["down"].servers == {}                         # registered, none passing: 503
    assert all(be.dynamic for be in model.backends.values())
    assert "balance leastconn" in text
    assert "acl host.web req.hdr(host),field(1,:),lower -m str web.local www.web.local" in text
    assert "use_backend web if host.web path.web" in text
    assert "evil" not in text.replace("down.local_backend_evil", "")    # Meta cannot inject lines
    lines = text.splitlines()
    # the most specific rule first: host+path before the catch-all path "/"
    assert lines.index("    use_backend web if host.web path.web") < lines.index("    use_backend root if path.root")
    assert "frontend tcp-db" in text and "bind 127.0.0.1:15432" in text
    assert "http-request use-service prometheus-exporter" in text
    assert "load-server-state-from-file global" in text and "server-state-file" in text


def test_empty_catalog_renders_a_valid_config(tmp_path: Path):
    text = render("haproxy.cfg.j2", FixedCatalog())
    assert haproxy_check(text, tmp_path).returncode == 0
    assert set(parse_config(text).backends) == {"edge.unrouted"}


def test_kv_fragments_are_spliced_into_their_sections(tmp_path: Path):
    kv = {"haproxy/global": "maxconn 3000\n# a comment\n",
          "haproxy/defaults": "timeout check 3s",
          "haproxy/frontends/http": "http-request set-header X-Edge yes",
          "haproxy/frontends/admin": "bind 127.0.0.1:18999\ndefault_backend static",
          "haproxy/backends/web": "http-response set-header X-Web yes",
          "haproxy/backends/static": "http-request return status 200 content-type text/plain string ok",
          "haproxy/backends/nested/ignored": "bogus"}
    text = render("haproxy.cfg.j2", catalog(kv))
    assert haproxy_check(text, tmp_path).returncode == 0
    sections = text.split("\nbackend ")
    web = next(s for s in sections if s.startswith("web\n"))
    assert "http-response set-header X-Web yes" in web
    assert "    maxconn 3000" in text.split("defaults")[0]
    assert "frontend admin" in text and "backend static" in text and "bogus" not in text
    other = render("haproxy.cfg.j2", catalog(dict(kv, **{"haproxy/global": "maxconn 4000"})))
    assert diff_models(parse_config(text), parse_config(other)).structural


def test_invalid_fragment_fails_the_check_with_the_alert_line(tmp_path: Path):
    text = render("haproxy.cfg.j2", catalog({"haproxy/backends/web": "bogus_directive on"}))
    staged = tmp_path / "staged.cfg"
    staged.write_text(text)
    controller = HAProxyController(Settings(config=str(staged)), Metrics(), log)
    result = controller.check(str(staged))
    assert not result.ok
    assert any("bogus_directive" in alert and "staged.cfg:" in alert for alert in result.alerts)


def test_scale_event_is_a_runtime_only_diff_and_routing_change_is_structural():
    base = catalog()
    before = parse_config(render("haproxy.cfg.j2", base))
    base.health["web"].append(instance("node-3", "web-4", "web", 9004))
    base.health["web"][1]["Checks"][0]["Status"] = "passing"           # health flap back to passing
    after = parse_config(render("haproxy.cfg.j2", base))
    diff = diff_models(before, after)
    assert diff.runtime_only and sorted(c.server.name for c in diff.changes) == ["node-2-web-2", "node-3-web-4"]
    base.health["db"][0]["Service"]["Meta"]["edge-port"] = "15433"
    assert diff_models(after, parse_config(render("haproxy.cfg.j2", base))).structural


@pytest.mark.parametrize("count, slots", [(1, 10), (10, 10), (11, 20), (41, 80)])
def test_dns_variant_slot_policy(count: int, slots: int, tmp_path: Path):
    web = [instance(f"n{i}", f"web{i}", "web", 9000 + i, status="critical" if i % 3 else "passing")
           for i in range(count)]
    text = render("haproxy-dns.cfg.j2", FixedCatalog({"web": web}), {"dns_addr": "127.0.0.1:18600"})
    assert haproxy_check(text, tmp_path).returncode == 0
    assert (f"server-template web {slots} _web._tcp.service.consul resolvers registry "
            "resolve-prefer ipv4 init-addr last,none") in text
    assert "nameserver registry tcp@127.0.0.1:18600" in text
    assert "hold obsolete 500ms" in text


def test_dns_variant_udp_and_unchanged_when_instances_change_within_slots(tmp_path: Path):
    data = catalog()
    text = render("haproxy-dns.cfg.j2", data, {"dns_transport": "udp", "accepted_payload_size": 4096})
    assert haproxy_check(text, tmp_path).returncode == 0
    assert "nameserver registry 127.0.0.1:8600" in text and "accepted_payload_size 4096" in text
    data.health["web"].append(instance("node-3", "web-4", "web", 9004))
    again = render("haproxy-dns.cfg.j2", data, {"dns_transport": "udp", "accepted_payload_size": 4096})
    assert diff_models(parse_config(text), parse_config(again)).empty   # no reload for a scale event


@pytest.fixture
def run_dir() -> Iterator[Path]:
    yield from short_dir()


def test_rendered_config_routes_real_requests(run_dir: Path):
    """Render → HAProxy → real backends: host+path, catch-all path, TCP mode, unrouted 404, no passing 503."""
    web, root, db = Backend("web"), Backend("root"), Backend("db")
    http_port, stats_port, tcp_port = free_port(), free_port(), free_port()
    data = FixedCatalog({
        "web": [instance("n1", "web1", "web", web.port, meta={"edge-host": "web.local", "edge-path": "/api"})],
        "root": [instance("n1", "root1", "root", root.port, meta={"edge-path": "/"})],
        "db": [instance("n1", "db1", "db", db.port, meta={"edge-mode": "tcp", "edge-port": str(tcp_port)})],
        "down": [instance("n1", "down1", "down", 1, status="critical", meta={"edge-host": "down.local"})],
    })
    settings = Settings(config=str(run_dir / "haproxy.cfg"), master_socket=str(run_dir / "m.sock"),
                        extra={"http_port": http_port, "stats_port": stats_port})
    config = run_dir / "haproxy.cfg"
    config.write_text(render("haproxy.cfg.j2", data, haproxy_variables(settings)))
    controller = HAProxyController(settings, Metrics(), log)
    try:
        controller.start(str(config))
        url = f"http://127.0.0.1:{http_port}"
        assert requests.get(url + "/api/users", headers={"Host": "web.local"}, timeout=5).text == "web"
        assert requests.get(url + "/api", headers={"Host": "WEB.local:80"}, timeout=5).text == "web"
        assert requests.get(url + "/apiary", headers={"Host": "web.local"}, timeout=5).text == "root"
        assert requests.get(url + "/other", timeout=5).text == "root"
        assert requests.get(url + "/", headers={"Host": "down.local"}, timeout=5).status_code == 503
        assert requests.get(f"http://127.0.0.1:{tcp_port}/", timeout=5).text == "db"
        assert "haproxy_process" in requests.get(f"http://127.0.0.1:{stats_port}/metrics", timeout=5).text
        # the controller found the Runtime API socket and state file from the rendered config
        assert controller.runtime.path == str(run_dir / "haproxy-admin.sock")
        assert controller.state_file == str(run_dir / "haproxy-server-state")
        del data.health["root"]
        config.write_text(render("haproxy.cfg.j2", data, haproxy_variables(settings)))
        result = controller.apply(None, config.read_text(), str(config))
        assert result.kind == "reload" and result.ok
        assert requests.get(url + "/other", timeout=5).status_code == 404
    finally:
        controller.stop()
        for backend in (web, root, db):
            backend.stop()
