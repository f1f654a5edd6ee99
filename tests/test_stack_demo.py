"""`edgestack demo-app` against a real agent: registers with a passing HTTP check on start, answers
with its instance ID, deregisters on SIGTERM and on SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from edgestack.client import CLIError
from edgestack.demo import parse_meta
from tests.procs import ROOT, AgentProcess, wait_until


def start_demo(agent: AgentProcess, tmp_path: Path, *flags: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_HTTP_")}
    with open(tmp_path / "demo.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "edgestack", "demo-app", "-http-addr", agent.http_addr,
                                 "-check-interval", "1s", *flags], stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=env)


def passing(agent: AgentProcess, service: str) -> list[dict]:
    return requests.get(f"{agent.url}/v1/health/service/{service}", params={"passing": ""}, timeout=5).json()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_registers_answers_and_deregisters(dev_agent: AgentProcess, tmp_path: Path, sig: int) -> None:
    proc = start_demo(dev_agent, tmp_path, "-name", "shop", "-id", "shop-a", "-meta", "edge-host=shop.local",
                      "-tag", "v1")
    try:
        entries = wait_until(lambda: passing(dev_agent, "shop"), timeout=20, message="shop-a passing")
        (entry,) = entries
        svc = entry["Service"]
        assert (svc["ID"], svc["Address"], svc["Tags"]) == ("shop-a", "127.0.0.1", ["v1"])
        assert svc["Meta"] == {"edge-host": "shop.local"}
        (check,) = [c for c in entry["Checks"] if c["ServiceID"] == "shop-a"]
        assert check["Status"] == "passing"
        resp = requests.get(f"http://127.0.0.1:{svc['Port']}/any/path", timeout=5)
        assert resp.headers["X-Instance"] == "shop-a" and "hello from shop-a" in resp.text
        info = requests.get(f"http://127.0.0.1:{svc['Port']}/x", headers={"Accept": "application/json"},
                            timeout=5).json()
        assert info == {"id": "shop-a", "service": "shop", "address": "127.0.0.1", "port": svc["Port"],
                        "path": "/x"}
        proc.send_signal(sig)
        assert proc.wait(15) == 0
        services = requests.get(f"{dev_agent.url}/v1/agent/services", timeout=5).json()
        assert "shop-a" not in services
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_default_meta_routes_every_path_and_bad_meta_is_refused() -> None:
    assert parse_meta([]) == {"edge-path": "/"}
    assert parse_meta(["edge-host=a.local", "team=x=y"]) == {"edge-host": "a.local", "team": "x=y"}
    with pytest.raises(CLIError):
        parse_meta(["novalue"])


def test_unreachable_registry_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "edgestack", "demo-app", "-http-addr", "127.0.0.1:9"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 1
    assert "cannot reach the registry at http://127.0.0.1:9" in done.stderr
