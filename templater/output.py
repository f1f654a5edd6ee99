"""Installing output: staged file → check → atomic rename (perms, one .bak) → restore when asked.

Nothing is installed unchecked (DESIGN.md): the candidate is written beside the destination, the
check command (e.g. `haproxy -c -f {staged}`) judges it there, and only then does a rename swap it
in, so a reader sees either the old file or the new one, never half of one. Unchanged bytes mean
no write and no command, which is what keeps HAProxy from reloading for nothing.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from templater.config import TemplateConfig

log = logging.getLogger("templater.output")

PLACEHOLDERS = ("{staged}", "{{.src}}")
OUTPUT_LIMIT = 4000


@dataclass(frozen=True)
class CheckResult:
    """The verdict on a staged file; `alerts` are the lines worth showing (HAProxy's [ALERT] lines)."""

    ok: bool
    alerts: list[str] = field(default_factory=list)
    output: str = ""


@dataclass(frozen=True)
class ApplyResult:
    """What applying an installed file to a running process did (templater.haproxy's controller)."""

    ok: bool
    kind: str = "none"  # "none" | "runtime" | "reload"
    alerts: list[str] = field(default_factory=list)
    detail: str = ""


@dataclass(frozen=True)
class CommandResult:
    ok: bool
    returncode: int | None
    output: str
    timed_out: bool = False


@dataclass(frozen=True)
class InstallOutcome:
    """changed: the rendered bytes differ from the destination; installed: they are now on disk."""

    changed: bool
    installed: bool
    previous: bytes | None = None
    check: CheckResult | None = None


def read_current(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def alert_lines(output: str) -> list[str]:
    """HAProxy's check prints [ALERT]/[WARNING] noise; the ALERT lines say what is wrong."""
    alerts = [line.strip() for line in output.splitlines() if "ALERT" in line]
    return alerts or [line.strip() for line in output.splitlines() if line.strip()][-5:]


def with_staged_path(command: str | list[str], staged: str) -> str | list[str]:
    """Put the staged path where the command asks ({staged} or confd's {{.src}}), else append it."""
    if isinstance(command, list):
        if any(p in arg for arg in command for p in PLACEHOLDERS):
            return [_substitute(arg, staged) for arg in command]
        return [*command, staged]
    if any(p in command for p in PLACEHOLDERS):
        return _substitute(command, shlex.quote(staged))
    return f"{command} {shlex.quote(staged)}"


def _substitute(text: str, value: str) -> str:
    for placeholder in PLACEHOLDERS:
        text = text.replace(placeholder, value)
    return text


def run_command(command: str | list[str], timeout: float, env: dict[str, str] | None = None) -> CommandResult:
    """Run a string through /bin/sh -c or a list as argv; on timeout kill its whole process group."""
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    except OSError as exc:
        return CommandResult(False, None, f"cannot run {argv[0]}: {exc.strerror or exc}")
    try:
        output, _ = proc.communicate(timeout=timeout if timeout > 0 else None)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        output, _ = proc.communicate()
        return CommandResult(False, None, _text(output), timed_out=True)
    return CommandResult(proc.returncode == 0, proc.returncode, _text(output))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _text(output: bytes | None) -> str:
    return (output or b"").decode("utf-8", errors="replace")[-OUTPUT_LIMIT:]


def run_check(check_command: str | list[str], staged: str, timeout: float) -> CheckResult:
    result = run_command(with_staged_path(check_command, staged), timeout)
    if result.timed_out:
        return CheckResult(False, [f"check command timed out after {timeout:g}s"], result.output)
    return CheckResult(result.ok, [] if result.ok else alert_lines(result.output), result.output)


def stage(destination: str, content: bytes, perms: int, create_dirs: bool = True) -> str:
    """Write the candidate beside the destination (same filesystem, so the rename is atomic)."""
    directory = os.path.dirname(os.path.abspath(destination))
    if create_dirs:
        os.makedirs(directory, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{os.path.basename(destination)}.", suffix=".staged", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(staged, perms)
    except BaseException:
        discard(staged)
        raise
    return staged


def discard(staged: str) -> None:
    try:
        os.unlink(staged)
    except FileNotFoundError:
        pass


def install(staged: str, destination: str, backup: bool = False) -> None:
    """Swap the staged file in; with backup, the replaced file survives as exactly one `.bak`."""
    if backup and os.path.exists(destination):
        link = staged + ".bak"
        try:
            os.link(destination, link)
        except OSError:
            with open(destination, "rb") as src, open(link, "wb") as dst:
                dst.write(src.read())
        os.replace(link, destination + ".bak")
    os.replace(staged, destination)
    _fsync_dir(os.path.dirname(os.path.abspath(destination)))


def restore(destination: str, previous: bytes | None, perms: int) -> None:
    """Put the last good bytes back (after a failed reload); no previous file means remove ours."""
    if previous is None:
        try:
            os.unlink(destination)
        except FileNotFoundError:
            pass
        return
    install(stage(destination, previous, perms), destination)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


Checker = Callable[[str], CheckResult]


def write_if_changed(template: TemplateConfig, text: str, checker: Checker | None = None,
                     after_install: Callable[[bytes | None], None] | None = None) -> InstallOutcome:
    """The install pipeline for one render: compare → stage → check → rename.

    `checker` judges the staged path (the template's check_command, or the HAProxy controller);
    a failed check removes the staged file and leaves the destination byte for byte as it was.
    """
    content = text.encode("utf-8")
    previous = read_current(template.destination)
    if previous == content:
        return InstallOutcome(changed=False, installed=False, previous=previous)
    staged = stage(template.destination, content, template.perms, template.create_dest_dirs)
    try:
        if checker is not None:
            verdict = checker(staged)
            if not verdict.ok:
                return InstallOutcome(changed=True, installed=False, previous=previous, check=verdict)
        install(staged, template.destination, template.backup)
    finally:
        discard(staged)
    if after_install:
        after_install(previous)
    return InstallOutcome(changed=True, installed=True, previous=previous)


def command_checker(template: TemplateConfig) -> Checker | None:
    if not template.check_command:
        return None
    command = template.check_command
    return lambda staged: run_check(command, staged, template.command_timeout)
