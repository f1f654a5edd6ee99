"""End to end: a real agent process, the templater as a real process (`python -m templater`).

Counts come from the templater's own Prometheus endpoint and from a command that appends to a
file, so "exactly one re-render and one command" is observed from outside, like an operator would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.procs import ROOT, AgentProcess, free_port, wait_until
from tests.templater_proc import TemplaterProcess

SERVERS_TEMPLATE = """{% for s in services() %}
backend {{ s.name|sanitize }}
{% for i in service(s.name) %}
  server {{ (i.node ~ "-" ~ i.id)|sanitize }} {{ i.address }}:{{ i.port }}
{% endfor %}
{% endfor %}
"""


class Templater(TemplaterProcess):
    """One `python -m templater` process with its own metrics port, log file and stdout file."""

    def __init__(self, tmp_path: Path, args: list[str], name: str = "templater"):
        super().__init__(args, tmp_path / f"{name}.log", tmp_path / f"{name}.stdout")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One -dev agent for the module; tests use their own service names and keys.

    Stopped with a short grace period: an agent still holding parked blocking queries from a
    stopped templater may otherwise take its full shutdown timeout.
    """
    proc = AgentProcess().start(tmp_path_factory.mktemp("registry"))
    yield proc
    proc.stop(timeout=2)


@pytest.fixture
def templaters(tmp_path: Path) -> Iterator[callable]:
    started: list[Templater] = []

    def start(args: list[str], name: str = "templater") -> Templater:
        started.append(Templater(tmp_path, args, name).start())
        return started[-1]

    yield start
    for templater in started:
        templater.stop()


def register(agent: AgentProcess, sid: str, port: int, name: str = "web", status: str = "passing") -> None:
    body = {"Name": name, "ID": sid, "Address": "127.0.0.1", "Port": port,
            "Check": {"CheckID": f"service:{sid}", "TTL": "600s", "Status": status}}
    requests.put(f"{agent.url}/v1/agent/service/register", json=body, timeout=5).raise_for_status()


def kv_put(agent: AgentProcess, key: str, value: str) -> None:
    requests.put(f"{agent.url}/v1/kv/{key}", data=value.encode(), timeout=5).raise_for_status()


def run_templater(*args: str) -> subprocess.CompletedProcess:
    """`python -m templater <args>` to completion (the -once and -dry modes), its output captured."""
    return subprocess.run([sys.executable, "-m", "templater", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_scale_event_renders_once_runs_one_command_and_unrelated_writes_render_nothing(
        registry: AgentProcess, templaters, tmp_path: Path) -> None:
    (tmp_path / "servers.j2").write_text(SERVERS_TEMPLATE)
    commands = tmp_path / "commands.log"
    config = tmp_path / "t.hcl"
    config.write_text(f"""
consul {{
  address = "{registry.http_addr}"
}}
template {{
  source      = "{tmp_path}/servers.j2"
  destination = "{tmp_path}/servers.cfg"
  command     = "echo run >> {commands}"
}}
template {{
  contents    = "marker={{{{ key_or_default('app/marker', 'none') }}}}\\n"
  destination = "{tmp_path}/marker.txt"
  command     = "echo run >> {commands}"
}}
""")
    register(registry, "scale1", 8001, name="scale")
    servers, marker = tmp_path / "servers.cfg", tmp_path / "marker.txt"
    templater = templaters(["-config", str(config)])
    wait_until(lambda: templater.metric("templater_renders_total") == 2 and lines(commands) == 1, 15,
               message="first renders of both templates")
    assert "server node1-scale1 127.0.0.1:8001" in servers.read_text()
    assert lines(commands) == 1  # two templates installed, one shared command ran once

    register(registry, "scale2", 8002, name="scale")
    wait_until(lambda: "scale2" in servers.read_text(), 10, message="scale2 in servers.cfg")
    kv_put(registry, "unrelated/key", "x")
    kv_put(registry, "app/marker", "1")  # a fence: once marker.txt changes, earlier events were seen
    wait_until(lambda: marker.read_text() == "marker=1\n", 10, message="marker re-render")
    wait_until(lambda: lines(commands) == 3, 5, message="command after the marker render")
    assert templater.metric("templater_renders_total") == 4  # +1 servers (scale), +1 marker, 0 unrelated
    assert templater.metric("templater_commands_total") == 3
    assert templater.metric("templater_installs_total") == 4
    services = requests.get(f"{registry.url}/v1/catalog/services", timeout=5).json()
    # catalog.services + one health query per service + app/marker
    assert templater.metric("templater_watched_dependencies") == len(services) + 2


def test_template_edits_bad_templates_and_failing_checks_keep_the_last_good_file(
        registry: AgentProcess, templaters, tmp_path: Path) -> None:
    source, dest = tmp_path / "app.j2", tmp_path / "app.conf"
    source.write_text('value={{ key("cfg/value") }}\n')
    kv_put(registry, "cfg/value", "ok-1")
    templater = templaters(["-consul-addr", registry.http_addr, "-template", f"{source}:{dest}"])
    wait_until(lambda: dest.exists() and dest.read_text() == "value=ok-1\n", 15, message="first render")

    source.write_text('edited\nvalue={{ key("cfg/value") }}\n')
    wait_until(lambda: dest.read_text() == "edited\nvalue=ok-1\n", 10, message="watchdog re-render")

    good = dest.read_bytes()
    source.write_text('edited\n{% if %}\n')
    wait_until(lambda: f"{source}:2: syntax error" in templater.log(), 10, message="syntax error logged")
    kv_put(registry, "cfg/value", "ok-2")
    wait_until(lambda: templater.metric("templater_render_errors_total") >= 1, 5, message="render error metric")
    assert dest.read_bytes() == good

    source.write_text('value={{ key("cfg/value") }}\n{{ no_such_variable }}\n')
    wait_until(lambda: f"{source}:2: 'no_such_variable' is undefined" in templater.log(), 10,
               message="runtime error logged")
    assert dest.read_bytes() == good
    source.write_text('value={{ key("cfg/value") }}\n')
    wait_until(lambda: dest.read_text() == "value=ok-2\n", 10, message="render after the fix")


def test_failing_check_command_leaves_the_old_file(registry: AgentProcess, templaters, tmp_path: Path) -> None:
    dest = tmp_path / "checked.conf"
    config = tmp_path / "t.hcl"
    config.write_text(f"""
template {{
  contents      = "mode={{{{ key('cfg/mode') }}}}\\n"
  destination   = "{dest}"
  check_command = "grep -q 'mode=good' {{staged}} || {{ echo '[ALERT] mode must be good' >&2; exit 1; }}"
}}
""")
    kv_put(registry, "cfg/mode", "good")
    templater = templaters(["-consul-addr", registry.http_addr, "-config", str(config)])
    wait_until(lambda: dest.exists(), 15, message="first render")
    good = dest.read_bytes()
    kv_put(registry, "cfg/mode", "evil")
    wait_until(lambda: templater.metric("templater_check_failures_total") == 1, 10, message="check failure")
    assert dest.read_bytes() == good
    assert "[ALERT] mode must be good" in templater.log()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".staged")]


def test_registry_killed_and_restarted_mid_watch_recovers(templaters, tmp_path: Path) -> None:
    agent = AgentProcess(data_dir=tmp_path / "data").start(tmp_path)
    try:
        (tmp_path / "servers.j2").write_text(SERVERS_TEMPLATE)
        dest = tmp_path / "servers.cfg"
        register(agent, "web1", 8001)
        templater = templaters(["-consul-addr", agent.http_addr, "-template", f"{tmp_path}/servers.j2:{dest}"])
        wait_until(lambda: dest.exists() and "web1" in dest.read_text(), 15, message="first render")
        before = dest.read_bytes()
        agent.kill()
        wait_until(lambda: "blocked on" in templater.log(), 10, message="the templater noticed the outage")
        assert dest.read_bytes() == before and templater.proc.poll() is None
        agent.start(tmp_path)
        register(agent, "web2", 8002)
        wait_until(lambda: "web2" in dest.read_text(), 30, message="render after the registry came back")
        assert "web1" in dest.read_text()
        templater.stop()
    finally:
        agent.stop(timeout=2)


def test_once_with_hcl_config_runs_commands_once_and_exits(registry: AgentProcess, tmp_path: Path) -> None:
    register(registry, "once1", 8001, name="once")
    commands = tmp_path / "commands.log"
    config = tmp_path / "t.hcl"
    config.write_text(f"""
template {{
  contents    = "{{% for i in service('once') %}}{{{{ i.id }}}}{{% endfor %}}\\n"
  destination = "{tmp_path}/a.txt"
  command     = ["sh", "-c", "echo run >> {commands}"]
}}
template {{
  contents    = "{{{{ nodes()|map(attribute='name')|join(',') }}}}\\n"
  destination = "{tmp_path}/b.txt"
  command     = ["sh", "-c", "echo run >> {commands}"]
  perms       = "0600"
}}
""")
    done = run_templater("-config", str(config), "-consul-addr", registry.url, "-once")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.txt").read_text() == "once1" and (tmp_path / "b.txt").read_text() == "node1\n"
    assert oct((tmp_path / "b.txt").stat().st_mode & 0o777) == "0o600"
    assert lines(commands) == 1


def test_dry_prints_and_changes_nothing(registry: AgentProcess, tmp_path: Path) -> None:
    register(registry, "dry1", 8001, name="dry")
    dest, marker = tmp_path / "never.txt", tmp_path / "ran"
    (tmp_path / "s.j2").write_text(SERVERS_TEMPLATE)
    done = run_templater(f"-consul-addr={registry.http_addr}", "--once", "--dry",
                         "-template", f"{tmp_path}/s.j2:{dest}:touch {marker}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"> {dest}\n") and "server node1-dry1 127.0.0.1:8001" in done.stdout
    assert not dest.exists() and not marker.exists()


def test_once_exits_non_zero_with_a_clear_message_when_the_registry_is_down(tmp_path: Path) -> None:
    done = run_templater("-consul-addr", f"127.0.0.1:{free_port()}", "-once",
                         "-template", f"{tmp_path}/x.j2:{tmp_path}/x")
    assert done.returncode != 0 and "template not found" in done.stderr
    (tmp_path / "x.j2").write_text("{{ services() }}")
    done = run_templater("-consul-addr", f"127.0.0.1:{free_port()}", "-once",
                         "-template", f"{tmp_path}/x.j2:{tmp_path}/x")
    assert done.returncode == 14
    assert "giving up on the registry" in done.stderr and "Connection refused" in done.stderr
    assert not (tmp_path / "x").exists()


def test_missing_key_warns_and_error_on_missing_key_fails(registry: AgentProcess, templaters,
                                                          tmp_path: Path) -> None:
    config = tmp_path / "t.hcl"
    waiting, strict = tmp_path / "waiting.txt", tmp_path / "strict.txt"
    config.write_text(f"""
missing_key_warning = "1s"
template {{
  contents    = "flag={{{{ key('feature/flag') }}}}\\n"
  destination = "{waiting}"
}}
template {{
  contents             = "line one\\nflag={{{{ key('feature/other') }}}}\\n"
  destination          = "{strict}"
  error_on_missing_key = true
}}
""")
    templater = templaters(["-consul-addr", registry.http_addr, "-config", str(config)])
    wait_until(lambda: "key 'feature/flag' does not exist" in templater.log(), 10, message="missing-key warning")
    assert "WARNING" in templater.log() and not waiting.exists()
    assert "(inline contents):2: key 'feature/other' does not exist" in templater.log()
    assert not strict.exists() and templater.metric("templater_render_errors_total") >= 1
    kv_put(registry, "feature/flag", "on")
    kv_put(registry, "feature/other", "on")
    wait_until(lambda: waiting.exists() and strict.exists(), 10, message="renders once the keys exist")
    assert waiting.read_text() == "flag=on\n" and strict.read_text() == "line one\nflag=on\n"


def test_sighup_rereads_config_and_sigterm_stops_cleanly(registry: AgentProcess, templaters,
                                                         tmp_path: Path) -> None:
    config, pid_file = tmp_path / "t.hcl", tmp_path / "templater.pid"
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    block = 'template {{\n  contents = "{text}\\n"\n  destination = "{dest}"\n}}\n'
    config.write_text(block.format(text="one", dest=one))
    templater = templaters(["-consul-addr", registry.http_addr, "-config", str(config),
                            "-pid-file", str(pid_file)])
    wait_until(lambda: one.exists(), 10, message="first template")
    assert pid_file.read_text().strip() == str(templater.proc.pid)
    config.write_text(block.format(text="one", dest=one) + block.format(text="two", dest=two))
    templater.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: two.exists(), 10, message="template added by SIGHUP")
    metrics = templater.metrics()
    for name in ("renders", "render_errors", "check_failures", "installs", "commands", "command_failures",
                 "reloads", "reload_failures", "runtime_updates", "haproxy_restarts"):
        assert f"templater_{name}_total" in metrics
    assert "templater_watched_dependencies" in metrics and "templater_seconds_since_last_render" in metrics
    assert templater.stop(signal.SIGTERM) == 0
    assert not pid_file.exists()


def test_wait_coalesces_a_burst_into_one_render(registry: AgentProcess, templaters, tmp_path: Path) -> None:
    dest, commands = tmp_path / "burst.txt", tmp_path / "commands.log"
    (tmp_path / "burst.j2").write_text("{% for i in service('burst') %}{{ i.id }}\n{% endfor %}")
    register(registry, "burst0", 9000, name="burst")
    templater = templaters(["-consul-addr", registry.http_addr, "-wait", "1s:4s",
                            "-template", f"{tmp_path}/burst.j2:{dest}:echo run >> {commands}"])
    wait_until(lambda: lines(commands) == 1, 10, message="first render")
    for n in range(1, 6):
        register(registry, f"burst{n}", 9000 + n, name="burst")
    wait_until(lambda: lines(dest) == 6, 15, message="all six instances rendered")
    wait_until(lambda: lines(commands) == 2, 5, message="the command after the burst")
    assert templater.metric("templater_renders_total") == 2
