"""Installing: staged → check → atomic rename, perms, .bak, unchanged bytes, commands, HAProxy hand-off."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from templater.config import Config, ConsulConfig, HAProxySettings, TemplateConfig
from templater.output import (
    ApplyResult,
    CheckResult,
    command_checker,
    run_command,
    with_staged_path,
    write_if_changed,
)
from templater.runner import Runner
from tests.procs import free_port


def staged_leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".staged")]


def test_install_sets_perms_keeps_one_backup_and_skips_unchanged_bytes(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "out.cfg"
    template = TemplateConfig(destination=str(dest), contents="", perms=0o640, backup=True)
    first = write_if_changed(template, "one\n")
    assert first.installed and dest.read_text() == "one\n" and stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert not (tmp_path / "sub" / "out.cfg.bak").exists()
    second = write_if_changed(template, "two\n")
    assert second.installed and second.previous == b"one\n"
    assert (tmp_path / "sub" / "out.cfg.bak").read_text() == "one\n"
    inode, mtime = dest.stat().st_ino, dest.stat().st_mtime_ns
    third = write_if_changed(template, "two\n")
    assert not third.changed and not third.installed
    assert (dest.stat().st_ino, dest.stat().st_mtime_ns) == (inode, mtime)
    assert staged_leftovers(dest.parent) == []


def test_failed_check_leaves_the_old_file_byte_for_byte(tmp_path: Path) -> None:
    dest = tmp_path / "out.cfg"
    dest.write_bytes(b"good\x00bytes\n")
    template = TemplateConfig(destination=str(dest), contents="",
                              check_command="grep -q good {staged} || { echo '[ALERT] no good' >&2; exit 1; }")
    outcome = write_if_changed(template, "bad\n", command_checker(template))
    assert outcome.changed and not outcome.installed
    assert outcome.check is not None and outcome.check.alerts == ["[ALERT] no good"]
    assert dest.read_bytes() == b"good\x00bytes\n" and staged_leftovers(tmp_path) == []
    assert write_if_changed(template, "good too\n", command_checker(template)).installed
    assert dest.read_text() == "good too\n"


def test_check_gets_the_staged_path_beside_the_destination(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    for check in (f"cp {{staged}} {seen}", ["cp", "{{.src}}", str(seen)], f"sh -c 'cp $0 {seen}'"):
        template = TemplateConfig(destination=str(tmp_path / "out"), contents="", check_command=check)
        (tmp_path / "out").unlink(missing_ok=True)
        assert write_if_changed(template, f"{check}\n", command_checker(template)).installed
        assert seen.read_text() == f"{check}\n"
    assert with_staged_path("haproxy -c -f", "/a b") == "haproxy -c -f '/a b'"
    assert with_staged_path(["haproxy", "-c", "-f"], "/a b") == ["haproxy", "-c", "-f", "/a b"]


def test_command_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    marker = tmp_path / "late"
    result = run_command(f"sleep 30; touch {marker}", timeout=0.3)
    assert result.timed_out and not result.ok and not marker.exists()
    result = run_command(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=5)
    assert (result.ok, result.returncode, sorted(result.output.split())) == (False, 3, ["err", "out"])


class FakeController:
    """Stands in for templater/haproxy/controller.py to test the runner's hand-off (no HAProxy here)."""

    def __init__(self, settings: HAProxySettings, metrics: object, log: object):
        self.settings, self.calls = settings, []
        self.check_ok, self.apply_result = True, ApplyResult(ok=True, kind="runtime")

    def start(self, config_path: str) -> None:
        self.calls.append(("start", Path(config_path).read_text()))

    def check(self, staged_path: str) -> CheckResult:
        self.calls.append(("check", Path(staged_path).read_text()))
        return CheckResult(self.check_ok, [] if self.check_ok else ["[ALERT] parsing [x:1]: bad"], "")

    def apply(self, previous: str | None, current: str, config_path: str) -> ApplyResult:
        self.calls.append(("apply", previous, current))
        return self.apply_result

    def stop(self) -> None:
        self.calls.append(("stop",))

    def running(self, config_path: str) -> bool:
        return True  # as if a master answered: attach before installing

    def detach(self) -> None:
        self.calls.append(("detach",))


def test_haproxy_template_goes_through_the_controller(tmp_path: Path) -> None:
    dest = tmp_path / "haproxy.cfg"
    dest.write_text("v0\n")
    template = TemplateConfig(destination=str(dest), contents="")
    config = Config(consul=ConsulConfig(address=f"127.0.0.1:{free_port()}"), templates=(template,),
                    haproxy=HAProxySettings(config=str(dest)))
    controllers: list[FakeController] = []

    def factory(*args: object) -> FakeController:
        controllers.append(FakeController(*args))  # type: ignore[arg-type]
        return controllers[-1]

    runner = Runner(config, controller_factory=factory)
    state = runner.templates[0]
    assert state.haproxy
    runner._install_haproxy(state, "v1\n")
    fake = controllers[0]
    assert fake.calls == [("start", "v0\n"), ("check", "v1\n"), ("apply", "v0\n", "v1\n")]
    fake.check_ok = False
    runner._install_haproxy(state, "broken\n")
    assert dest.read_text() == "v1\n" and runner.metrics.value("templater_check_failures_total") == 1
    fake.check_ok, fake.apply_result = True, ApplyResult(ok=False, kind="reload", alerts=["[ALERT] x"])
    runner._install_haproxy(state, "v2\n")
    assert dest.read_text() == "v1\n"  # the failed reload's file was replaced by the last good one
    assert fake.calls[-1] == ("apply", "v1\n", "v2\n")
    runner.shutdown()
    assert fake.calls[-1] == ("stop",)
    assert staged_leftovers(tmp_path) == []


def test_haproxy_controller_starts_after_the_first_install_when_no_file_existed(tmp_path: Path) -> None:
    dest = tmp_path / "haproxy.cfg"
    config = Config(consul=ConsulConfig(address=f"127.0.0.1:{free_port()}"),
                    templates=(TemplateConfig(destination=str(dest), contents=""),),
                    haproxy=HAProxySettings(config=str(dest)))
    fakes: list[FakeController] = []
    runner = Runner(config, controller_factory=lambda *a: fakes.append(FakeController(*a)) or fakes[-1])
    runner._install_haproxy(runner.templates[0], "v1\n")
    runner._install_haproxy(runner.templates[0], "v1\n")
    assert fakes[0].calls == [("check", "v1\n"), ("start", "v1\n")]
    runner.shutdown()
    assert not os.path.exists(str(dest) + ".bak")


def test_commands_run_once_per_run_and_failures_are_counted_not_fatal(tmp_path: Path) -> None:
    log = tmp_path / "ran"
    config = Config(consul=ConsulConfig(address=f"127.0.0.1:{free_port()}"),
                    templates=(TemplateConfig(destination=str(tmp_path / "x"), contents=""),))
    runner = Runner(config)
    shared = f"echo shared >> {log}"
    runner._run_commands([(shared, 5.0), ("exit 3", 5.0), (shared, 5.0), (["sleep", "5"], 0.2)])
    assert log.read_text() == "shared\n"
    assert runner.metrics.value("templater_commands_total") == 3
    assert runner.metrics.value("templater_command_failures_total") == 2
    assert runner.exit_code is None
    runner.shutdown()
