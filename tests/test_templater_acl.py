"""The templater against a registry with ACLs: a read token renders; no token under deny keeps the last good file."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.procs import AgentProcess, wait_until
from tests.test_templater_e2e import Templater

ROOT_TOKEN = "templater-acl-root"
READ_TOKEN = "templater-acl-read-secret"
ACL_HCL = ('acl {\n enabled = true\n default_policy = "deny"\n tokens {\n'
           f'  initial_management = "{ROOT_TOKEN}"\n }}\n}}\n')
READ_RULES = ('service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'
              'key_prefix "" { policy = "read" }\n')
TEMPLATE = """global {{ key_or_default("edge/global", "none") }}
{% for s in services() %}
backend {{ s.name|sanitize }}
{% for i in service(s.name) %}
  server {{ (i.node ~ "-" ~ i.id)|sanitize }} {{ i.address }}:{{ i.port }}
{% endfor %}
{% endfor %}
"""


def _as_root(agent: AgentProcess, method: str, path: str, **kwargs) -> requests.Response:
    resp = requests.request(method, agent.url + path, headers={"X-Consul-Token": ROOT_TOKEN}, timeout=10, **kwargs)
    resp.raise_for_status()
    return resp


def test_read_token_renders_and_no_token_keeps_the_last_good_output(tmp_path: Path) -> None:
    agent = AgentProcess(data_dir=tmp_path / "data", extra_args=["-hcl", ACL_HCL]).start(tmp_path)
    templaters: list[Templater] = []
    try:
        policy = _as_root(agent, "PUT", "/v1/acl/policy", json={"Name": "read-all", "Rules": READ_RULES}).json()
        _as_root(agent, "PUT", "/v1/acl/token", json={"Description": "templater", "SecretID": READ_TOKEN,
                                                      "Policies": [{"ID": policy["ID"]}]})
        _as_root(agent, "PUT", "/v1/agent/service/register",
                 json={"Name": "web", "ID": "web-1", "Address": "127.0.0.1", "Port": 9001,
                       "Check": {"TTL": "600s", "Status": "passing"}})
        _as_root(agent, "PUT", "/v1/kv/edge/global", data=b"maxconn 100")
        source = tmp_path / "servers.j2"
        source.write_text(TEMPLATE)

        with_token = tmp_path / "with-token.cfg"
        templaters.append(Templater(tmp_path, ["-consul-addr", agent.http_addr, "-token", READ_TOKEN,
                                               "-template", f"{source}:{with_token}"], "reader").start())
        wait_until(lambda: with_token.exists() and "server node1-web-1 127.0.0.1:9001" in with_token.read_text(),
                   20, message="render with the read token")
        assert "global maxconn 100" in with_token.read_text()

        last_good = tmp_path / "no-token.cfg"
        last_good.write_text("last good config\n")
        anonymous = Templater(tmp_path, ["-consul-addr", agent.http_addr, "-template", f"{source}:{last_good}"],
                              "anonymous").start()
        templaters.append(anonymous)
        wait_until(lambda: "permission denied" in anonymous.log().lower(), 20, message="permission error logged")
        assert "Permission denied" in anonymous.log() and "-token" in anonymous.log()
        assert last_good.read_text() == "last good config\n"
        for secret in (READ_TOKEN, ROOT_TOKEN):
            assert secret not in templaters[0].log() and secret not in anonymous.log()
            assert secret not in agent.log()
    finally:
        for templater in templaters:
            templater.stop()
        agent.stop()
