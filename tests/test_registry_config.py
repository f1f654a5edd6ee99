"""Agent configuration: flags, HCL/JSON files, CONSUL_LOCAL_CONFIG, refusals — parsing and a real start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from registry.config import ConfigError, hcl_loads, load_config_file, parse_args
from tests.procs import ROOT, AgentProcess


def test_flags_in_consul_spellings() -> None:
    config = parse_args(["-dev", "-http-port=9500", "-dns-port", "9600", "-node", "edge1", "-datacenter", "dc2",
                         "-client", "127.0.0.1", "-log-level", "debug", "-server", "-bootstrap-expect=1"], {})
    assert (config.dev, config.http_port, config.dns_port, config.node_name, config.datacenter) == \
        (True, 9500, 9600, "edge1", "dc2")
    assert config.log_level == "DEBUG" and config.data_dir is None


def test_flags_override_files_and_env(tmp_path: Path) -> None:
    (tmp_path / "a.hcl").write_text('datacenter = "dc-file"\nports { http = 7000 }\nnode_name = "from-file"\n')
    env = {"CONSUL_LOCAL_CONFIG": json.dumps({"datacenter": "dc-env", "ports": {"dns": 7600}})}
    config = parse_args(["-dev", "-config-dir", str(tmp_path), "-node", "from-flag"], env)
    assert (config.datacenter, config.http_port, config.dns_port, config.node_name) == \
        ("dc-env", 7000, 7600, "from-flag")


@pytest.mark.parametrize("argv,what", [(["-dev", "-join", "10.0.0.2"], "-join"),
                                       (["-dev", "-retry-join=10.0.0.2"], "-retry-join"),
                                       (["-dev", "-bootstrap-expect", "3"], "-bootstrap-expect=3")])
def test_cluster_requests_are_refused_with_directions(argv: list[str], what: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_args(argv, {})
    assert what in str(err.value) and "Consul" in str(err.value) and "-consul-addr" in str(err.value)


def test_data_dir_or_dev_is_required() -> None:
    with pytest.raises(ConfigError, match="-data-dir"):
        parse_args([], {})


def test_hcl_repeated_blocks_keep_every_key() -> None:
    """pyhcl loses keys of repeated blocks (DESIGN.md); the project's HCL reading must not."""
    data = hcl_loads('service {\n name = "a"\n port = 1\n}\nservice {\n name = "b"\n port = 2\n}\n')
    assert data["service"] == [{"name": "a", "port": 1}, {"name": "b", "port": 2}]


def test_hcl_comments_are_not_keys() -> None:
    data = hcl_loads('# a comment\nnode_name = "n" # trailing\nservice {\n  # inside\n  name = "a"\n}\n')
    assert data == {"node_name": "n", "service": [{"name": "a"}]}


def test_hcl_labelled_and_nested_blocks() -> None:
    data = hcl_loads('key_prefix "app/" { policy = "write" }\nkey_prefix "" { policy = "read" }\n'
                     'service {\n name = "web"\n check {\n  http = "http://x"\n  interval = "1s"\n }\n}\n')
    assert data["key_prefix"] == [{"app/": {"policy": "write"}}, {"": {"policy": "read"}}]
    assert data["service"][0]["check"] == [{"http": "http://x", "interval": "1s"}]


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"datacenter": ')
    with pytest.raises(ConfigError, match=r"bad.json:1"):
        load_config_file(bad)
    bad_hcl = tmp_path / "bad.hcl"
    bad_hcl.write_text("service { name = \n")
    with pytest.raises(ConfigError, match="bad.hcl"):
        load_config_file(bad_hcl)


def test_agent_starts_from_config_env_and_flags(tmp_path: Path) -> None:
    env = {"CONSUL_LOCAL_CONFIG": json.dumps({"datacenter": "edge-dc", "node_name": "env-node"})}
    agent = AgentProcess(data_dir=tmp_path / "d", env=env)
    agent.extra_args = []
    agent.start(tmp_path)
    try:
        me = requests.get(agent.url + "/v1/agent/self").json()
        # -node from the test harness wins over the env's node_name; the env's datacenter is used
        assert me["Config"]["Datacenter"] == "edge-dc" and me["Config"]["NodeName"] == "node1"
        assert "ready" in agent.log() and f"127.0.0.1:{agent.http_port}" in agent.log()
    finally:
        assert agent.stop() == 0  # clean stop on SIGTERM


def test_cluster_flag_exits_with_message() -> None:
    proc = subprocess.run([sys.executable, "-m", "registry", "-dev", "-retry-join", "10.0.0.9"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "a cluster is Consul's job" in proc.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path, shared_agent: AgentProcess) -> None:
    proc = subprocess.run([sys.executable, "-m", "registry", "-dev", "-http-port", str(shared_agent.http_port),
                           "-dns-port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "cannot listen" in proc.stderr


def test_interface_env_vars_name_the_addresses() -> None:
    """As in Consul's container image: CONSUL_BIND_INTERFACE / CONSUL_CLIENT_INTERFACE name an interface."""
    config = parse_args(["-dev"], {"CONSUL_BIND_INTERFACE": "lo", "CONSUL_CLIENT_INTERFACE": "lo"})
    assert (config.bind_addr, config.client_addr) == ("127.0.0.1", "127.0.0.1")
    with pytest.raises(ConfigError, match="no-such-if0"):
        parse_args(["-dev"], {"CONSUL_CLIENT_INTERFACE": "no-such-if0"})
