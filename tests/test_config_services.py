"""Service definitions from config files, end to end: registered at start, edits in the config dir
picked up without a restart (watchdog), SIGHUP / `edgestack reload`, and a broken file reported by
name while the agent keeps serving everything else.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.procs import ROOT, AgentProcess, wait_until
from tests.test_checks_support import HTTPBackend, check_record, wait_status

WEB_HCL = """
service {{
  name = "web"
  id   = "web1"
  port = {port}
  tags = ["edge", "v1"]
  meta {{
    team = "shop"
  }}
  check {{
    http     = "{url}"
    interval = "1s"
    timeout  = "1s"
  }}
  check {{
    id     = "web1-ttl"
    ttl    = "60s"
    status = "passing"
  }}
}}
"""

API_JSON = {"services": [
    {"name": "api", "id": "api1", "port": 9001, "checks": [{"ttl": "60s", "status": "passing"}]},
    {"name": "api", "id": "api2", "port": 9002},
]}


def _services(agent: AgentProcess) -> dict:
    return requests.get(agent.url + "/v1/agent/services", timeout=5).json()


def _reload(agent: AgentProcess) -> requests.Response:
    return requests.put(agent.url + "/v1/agent/reload", timeout=10)


def test_config_dir_services_and_live_edits(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    web = HTTPBackend().start()
    (conf / "web.hcl").write_text(WEB_HCL.format(port=web.port, url=web.url))
    (conf / "api.json").write_text(json.dumps(API_JSON))
    (conf / "notes.txt").write_text("not a config file")
    agent = AgentProcess(extra_args=["-config-dir", str(conf)]).start(tmp_path)
    try:
        services = _services(agent)
        assert sorted(services) == ["api1", "api2", "consul", "web1"]
        assert services["web1"]["Tags"] == ["edge", "v1"] and services["web1"]["Meta"] == {"team": "shop"}
        wait_status(agent, "service:web1:1", "passing")  # the file's HTTP check runs
        assert check_record(agent, "web1-ttl")["Status"] == "passing"

        # an edit: new port for web1; its TTL check keeps its status through the re-registration
        (conf / "web.hcl").write_text(WEB_HCL.format(port=web.port + 1, url=web.url))
        wait_until(lambda: _services(agent)["web1"]["Port"] == web.port + 1, 10, message="edit applied")
        assert check_record(agent, "web1-ttl")["Status"] == "passing"

        # a new file, and an instance dropped from an existing one
        (conf / "cache.json").write_text(json.dumps({"service": {"name": "cache", "port": 6379}}))
        (conf / "api.json").write_text(json.dumps({"services": API_JSON["services"][:1]}))
        wait_until(lambda: sorted(_services(agent)) == ["api1", "cache", "consul", "web1"], 10,
                   message="added and removed definitions applied")

        # a file removed: its services go, with their checks
        (conf / "web.hcl").unlink()
        wait_until(lambda: "web1" not in _services(agent), 10, message="removed file's service deregistered")
        checks = requests.get(agent.url + "/v1/agent/checks", timeout=5).json()
        assert not [cid for cid in checks if cid.startswith("service:web1") or cid == "web1-ttl"]

        # services registered over HTTP are never touched by a reload
        requests.put(agent.url + "/v1/agent/service/register", json={"Name": "manual"}, timeout=5)
        assert _reload(agent).status_code == 200
        assert "manual" in _services(agent)
    finally:
        agent.stop()
        web.stop()


def test_broken_file_reported_while_agent_keeps_serving(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.json").write_text(json.dumps({"service": {"name": "alpha", "port": 1}}))
    (conf / "b.hcl").write_text('service {\n  name = "beta"\n  port = 2\n}\n')
    agent = AgentProcess(extra_args=["-config-dir", str(conf)]).start(tmp_path)
    try:
        assert {"alpha", "beta"} <= set(_services(agent))
        (conf / "b.hcl").write_text('service {\n  name = "beta"\n  port = \n')  # broken HCL
        (conf / "c.json").write_text("{not json")
        resp = _reload(agent)
        assert resp.status_code == 500
        assert f"{conf / 'b.hcl'}: invalid HCL" in resp.text
        assert f"{conf / 'c.json'}:1: invalid JSON" in resp.text
        wait_until(lambda: f"{conf / 'b.hcl'}" in agent.log(), 5, message="broken file named in the log")
        # the last good definitions stay, the agent serves, other files still apply
        assert {"alpha", "beta"} <= set(_services(agent))
        (conf / "a.json").write_text(json.dumps({"service": {"name": "alpha", "port": 11}}))
        wait_until(lambda: _services(agent)["alpha"]["Port"] == 11, 10, message="good file applied")
        # an invalid definition (script check, scripts off) is refused with Consul's local wording
        (conf / "c.json").write_text(json.dumps({"service": {"name": "gamma", "check": {
            "args": ["/bin/true"], "interval": "10s"}}}))
        resp = _reload(agent)
        assert resp.status_code == 500
        assert f"{conf / 'c.json'}: service 'gamma': Scripts are disabled" in resp.text
        assert "enable_local_script_checks" in resp.text and "gamma" not in _services(agent)
        # fixed: everything applies, reload is clean again
        (conf / "b.hcl").write_text('service {\n  name = "beta"\n  port = 22\n}\n')
        (conf / "c.json").unlink()
        wait_until(lambda: _services(agent)["beta"]["Port"] == 22, 10, message="fixed file applied")
        assert _reload(agent).status_code == 200
        assert requests.get(agent.url + "/v1/status/leader", timeout=5).status_code == 200
    finally:
        agent.stop()


def test_config_file_sighup_cli_reload_and_restart(tmp_path: Path) -> None:
    conf_file = tmp_path / "svc.hcl"
    # auto_reload_config = false: no watcher, so only SIGHUP / reload can apply the edits below
    conf_file.write_text('auto_reload_config = false\nservice {\n  name = "solo"\n  port = 1\n}\n'
                         'check {\n  id = "host-ttl"\n  name = "host"\n  ttl = "60s"\n}\n')
    flag_service = 'service {\n  name = "flagged"\n  port = 5\n}'
    agent = AgentProcess(data_dir=tmp_path / "data", extra_args=["-config-file", str(conf_file),
                                                                 "-hcl", flag_service]).start(tmp_path)
    try:
        assert "solo" in _services(agent) and "flagged" in _services(agent)
        assert check_record(agent, "host-ttl")["Name"] == "host"  # a top-level check definition
        conf_file.write_text('service {\n  name = "solo"\n  port = 2\n}\n')
        agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: _services(agent)["solo"]["Port"] == 2, 10, message="SIGHUP reload")
        assert "host-ttl" not in requests.get(agent.url + "/v1/agent/checks", timeout=5).json()
        assert agent.proc.poll() is None

        conf_file.write_text('service {\n  name = "solo"\n  port = 3\n}\n')
        cli = subprocess.run([sys.executable, "-m", "edgestack", "reload", "-http-addr", agent.http_addr],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert cli.returncode == 0, cli.stderr
        assert _services(agent)["solo"]["Port"] == 3  # reload answers once applied
        assert "flagged" in _services(agent)  # a command-line definition survives every reload

        # removed while the agent is down: gone after the restart (ownership is persisted)
        agent.stop()
        conf_file.write_text("")
        agent.start(tmp_path)
        assert "solo" not in _services(agent)
    finally:
        agent.stop()
