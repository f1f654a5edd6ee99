"""The `edgestack` CLI in the consul CLI's shapes, against a real agent."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.procs import ROOT, AgentProcess


def run(agent: AgentProcess, *args: str, stdin: str | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "CONSUL_HTTP_ADDR": agent.http_addr, **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgestack", *args], cwd=ROOT, capture_output=True, text=True,
                          input=stdin, env=full_env, timeout=60)


def test_kv_put_get_delete(shared_agent: AgentProcess) -> None:
    assert run(shared_agent, "kv", "put", "cli/a", "hello").stdout.strip() == "Success! Data written to: cli/a"
    assert run(shared_agent, "kv", "get", "cli/a").stdout == "hello\n"
    run(shared_agent, "kv", "put", "cli/b/c", "x")
    assert run(shared_agent, "kv", "get", "-recurse", "cli/").stdout.splitlines() == ["cli/a:hello", "cli/b/c:x"]
    assert run(shared_agent, "kv", "get", "-keys", "cli/").stdout.splitlines() == ["cli/a", "cli/b/"]
    assert "Deleted key: cli/a" in run(shared_agent, "kv", "delete", "cli/a").stdout
    missing = run(shared_agent, "kv", "get", "cli/a")
    assert missing.returncode == 1 and "No key exists at: cli/a" in missing.stderr


def test_kv_cas_put_reports_failure(shared_agent: AgentProcess) -> None:
    run(shared_agent, "kv", "put", "cli/cas", "v")
    res = run(shared_agent, "kv", "put", "-cas", "-modify-index=1", "cli/cas", "w")
    assert res.returncode == 1 and "Did not write" in res.stderr


def test_kv_export_import_round_trip(shared_agent: AgentProcess) -> None:
    run(shared_agent, "kv", "put", "-flags=7", "cli/exp/one", "1")
    run(shared_agent, "kv", "put", "cli/exp/two", "2")
    exported = run(shared_agent, "kv", "export", "cli/exp/").stdout
    data = json.loads(exported)
    assert [(d["key"], d["flags"]) for d in data] == [("cli/exp/one", 7), ("cli/exp/two", 0)]
    run(shared_agent, "kv", "delete", "-recurse", "cli/exp/")
    res = run(shared_agent, "kv", "import", "-", stdin=exported)
    assert res.stdout.splitlines() == ["Imported: cli/exp/one", "Imported: cli/exp/two"]
    assert run(shared_agent, "kv", "get", "cli/exp/one").stdout == "1\n"


def test_services_register_deregister_and_catalog(shared_agent: AgentProcess, tmp_path: Path) -> None:
    definition = tmp_path / "web.hcl"
    definition.write_text('service {\n  name = "cli-web"\n  id = "cli-web-1"\n  port = 8080\n  tags = ["v1"]\n}\n')
    assert run(shared_agent, "services", "register", str(definition)).stdout.strip() == "Registered service: cli-web"
    assert "cli-web" in run(shared_agent, "catalog", "services").stdout.split()
    assert "v1" in run(shared_agent, "catalog", "services", "-tags").stdout
    assert "node1" in run(shared_agent, "catalog", "nodes").stdout
    assert "Deregistered service: cli-web" in run(shared_agent, "services", "deregister", str(definition)).stdout
    assert "cli-web" not in run(shared_agent, "catalog", "services").stdout.split()


def test_members_and_reload(shared_agent: AgentProcess) -> None:
    out = run(shared_agent, "members").stdout.splitlines()
    assert out[0].split()[:3] == ["Node", "Address", "Status"] and out[1].split()[2] == "alive"
    assert run(shared_agent, "reload").stdout.strip() == "Configuration reload triggered"


def test_unreachable_registry_is_a_clear_error(shared_agent: AgentProcess) -> None:
    res = run(shared_agent, "kv", "get", "x", env={"CONSUL_HTTP_ADDR": "127.0.0.1:1"})
    assert res.returncode == 1 and "cannot reach the registry" in res.stderr


def test_keys_with_reserved_characters_and_binary_values(shared_agent: AgentProcess, tmp_path: Path) -> None:
    run(shared_agent, "kv", "put", "cli/res/keep", "1")
    for key in ("cli/res?recurse", "cli/res/q?x=1", "cli/res/pct%41", "cli/res/h#frag"):
        assert run(shared_agent, "kv", "put", key, "v").returncode == 0
        assert run(shared_agent, "kv", "get", key).stdout == "v\n", key
    assert "Deleted key: cli/res?recurse" in run(shared_agent, "kv", "delete", "cli/res?recurse").stdout
    assert run(shared_agent, "kv", "get", "cli/res/keep").stdout == "1\n"  # not a recursive delete
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)))
    run(shared_agent, "kv", "put", "cli/res/bin", f"@{blob}")
    full_env = {**os.environ, "CONSUL_HTTP_ADDR": shared_agent.http_addr}
    raw = subprocess.run([sys.executable, "-m", "edgestack", "kv", "get", "cli/res/bin"], cwd=ROOT,
                         capture_output=True, env=full_env, timeout=60).stdout
    assert raw == bytes(range(256)) + b"\n"
    assert run(shared_agent, "kv", "get", "-base64", "cli/res/bin").stdout.strip() == \
        base64.b64encode(bytes(range(256))).decode()
