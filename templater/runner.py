"""The runner: watch → quiesce → render → check → install → command/apply, in one loop thread.

Unlike consul-template, which re-executes every template on any change (its #1365), only the
templates that read a changed dependency are rendered again. Commands of one run execute once
each, after all installs (several templates sharing one reload command cause one reload). Errors
are logged with file and line and counted; the last good output stays and the loop goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from templater.client import ConsulClient, PermissionDenied, RegistryUnavailable
from templater.config import Config, ConfigError, TemplateConfig, WaitConfig, haproxy_variables
from templater.dependencies import Dependency
from templater.haproxy.model import merge_servers
from templater.metrics import Metrics
from templater.output import (
    CheckResult,
    command_checker,
    read_current,
    restore,
    run_command,
    write_if_changed,
)
from templater.render import TemplateError, TemplateRenderer
from templater.watcher import SourceObserver, Watcher

log = logging.getLogger("templater")

ONCE_ATTEMPTS = 4  # -once gives up after ~2s of retries instead of waiting forever
EXIT_OK, EXIT_FAILED, EXIT_REGISTRY = 0, 1, 14  # 14: consul-template's "gave up on Consul" code
IDLE_TICK = 1.0
SOURCE_SETTLE = 0.1  # seconds a template source must be still before it is compiled

ControllerFactory = Callable[..., Any]


class TemplateState:
    """One template's progress: what it read, whether it must render, and when (quiescence)."""

    def __init__(self, config: TemplateConfig, wait: WaitConfig | None, haproxy: bool = False):
        self.config, self.wait, self.haproxy = config, wait, haproxy
        self.renderer = TemplateRenderer(config)
        self.compile_error: TemplateError | None = None
        self.deps: set[Dependency] = set()
        self.missing: dict[Dependency, str] = {}
        self.dirty = True
        self.quiet_until = 0.0
        self.deadline: float | None = None
        self.rendered_once = False
        self.finished = False  # -once: rendered and installed, or failed for good
        self.errored = False
        self.blocked_since: float | None = None
        self.warned: set[Dependency] = set()
        self.last_dry: str | None = None

    @property
    def label(self) -> str:
        return self.config.label

    def compile(self) -> TemplateError | None:
        try:
            self.renderer.compile()
            self.compile_error = None
        except TemplateError as exc:
            self.compile_error = exc
        return self.compile_error

    def watches_file(self, path: str) -> bool:
        """The source itself, or a file with its suffix below its directory (a partial it may include)."""
        if not self.config.source:
            return False
        source = os.path.abspath(self.config.source)
        suffix = os.path.splitext(source)[1]
        directory = os.path.dirname(source)
        return path == source or (bool(suffix) and path.startswith(directory + os.sep) and path.endswith(suffix))

    def mark_dirty(self, now: float, immediate: bool = False) -> None:
        """Quiescence: wait `min` after the latest change, but never past `max` after the first."""
        self.dirty = True
        if immediate or not self.rendered_once or self.wait is None or not self.wait.enabled:
            self.quiet_until, self.deadline = now, None
            return
        if self.deadline is None:
            self.deadline = now + self.wait.max
        self.quiet_until = min(now + self.wait.min, self.deadline)

    def ready(self, now: float) -> bool:
        return self.dirty and self.quiet_until <= now and self.compile_error is None

    def rendered(self) -> None:
        self.dirty, self.deadline = False, None


class Runner:
    """Owns the client, the watcher, the template states and (optionally) the HAProxy controller."""

    def __init__(self, config: Config, metrics: Metrics | None = None, stdout: TextIO | None = None,
                 config_loader: Callable[[], Config] | None = None,
                 controller_factory: ControllerFactory | None = None):
        self.config = config
        self.metrics = metrics or Metrics()
        self.stdout = stdout or sys.stdout
        self.config_loader = config_loader
        self.controller_factory = controller_factory
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._pending_sources: set[str] = set()
        self._sources_settle_at = 0.0
        self.exit_code: int | None = None
        self.controller: Any = None
        self.controller_started = False
        self.observer: Any = None
        self.pending_commands: list[tuple[str | list[str], float]] = []
        self.client, self.watcher = self._connect(config)
        self.templates = self._states(config)

    # ----------------------------------------------------------------- setup

    def _connect(self, config: Config) -> tuple[ConsulClient, Watcher]:
        retry = config.consul.retry
        if config.once and retry.attempts == 0:
            retry = type(retry)(attempts=ONCE_ATTEMPTS, backoff=retry.backoff, max_backoff=retry.max_backoff)
        client = ConsulClient(config.consul.address, config.consul.token, retry)
        watcher = Watcher(client, self._dependency_changed, config.block_query_wait, self._dependency_failed)
        client.on_retry = watcher.report_retry
        return client, watcher

    def _states(self, config: Config) -> list[TemplateState]:
        target = config.haproxy.config if config.haproxy else None
        states = []
        for template in config.templates:
            is_haproxy = target is not None and os.path.abspath(template.destination) == target
            state = TemplateState(template, config.wait_for(template), is_haproxy)
            if state.compile():
                self._template_failed(state, state.compile_error)
            states.append(state)
        return states

    # ----------------------------------------------------------------- events from other threads

    def _dependency_changed(self, dependency: Dependency) -> None:
        self.events.put(("dependency", dependency))

    def _dependency_failed(self, dependency: Dependency, exc: Exception) -> None:
        self.events.put(("failed", (dependency, exc)))

    def source_changed(self, path: str) -> None:
        self.events.put(("source", path))

    def request_reload(self) -> None:
        self.events.put(("reload", None))

    def request_stop(self) -> None:
        self.events.put(("stop", None))

    # ----------------------------------------------------------------- the loop

    def run(self) -> int:
        """Run until stopped (or, with -once, until every template is done); returns the exit code."""
        self._watch_sources()
        try:
            self._loop()
        finally:
            self.shutdown()
        return self.exit_code if self.exit_code is not None else EXIT_OK

    def _loop(self) -> None:
        self._render_ready(time.monotonic())
        while self.exit_code is None:
            try:
                batch = [self.events.get(timeout=self._next_timeout())]
            except queue.Empty:
                batch = []
            while True:
                try:
                    batch.append(self.events.get_nowait())
                except queue.Empty:
                    break
            self._handle(batch)
            if self.exit_code is not None:
                return
            now = time.monotonic()
            self._recompile_settled_sources(now)
            self._render_ready(now)
            self._warn_blocked(now)
            self._run_pending_commands(now)
            if self.config.once and all(t.finished for t in self.templates):
                self.exit_code = EXIT_FAILED if self._once_failed else EXIT_OK

    _once_failed = False

    def _handle(self, batch: list[tuple[str, Any]]) -> None:
        changed: set[Dependency] = set()
        sources: set[str] = set()
        now = time.monotonic()
        for kind, payload in batch:
            if kind == "dependency":
                changed.add(payload)
            elif kind == "failed":
                self._registry_failed(*payload)
            elif kind == "source":
                sources.add(payload)
            elif kind == "reload":
                self._reload()
            elif kind == "stop":
                self.exit_code = EXIT_OK if self.exit_code is None else self.exit_code
        if sources:
            self._pending_sources |= sources
            self._sources_settle_at = now + SOURCE_SETTLE
        if changed:
            for state in self.templates:
                if state.deps & changed:
                    state.mark_dirty(now)

    def _recompile_settled_sources(self, now: float) -> None:
        """Editors save in steps (truncate, write, rename): compile only once the file has been still a moment,
        so a half-written template is never rendered and installed."""
        if self._pending_sources and now >= self._sources_settle_at:
            sources, self._pending_sources = self._pending_sources, set()
            self._recompile(sources, now)

    def _next_timeout(self) -> float:
        now, wake = time.monotonic(), time.monotonic() + IDLE_TICK
        if self._pending_sources:
            wake = min(wake, self._sources_settle_at)
        for state in self.templates:
            if state.dirty and state.compile_error is None:
                wake = min(wake, state.quiet_until)
            if state.blocked_since is not None and (len(state.warned) < len(state.missing) or self.pending_commands):
                wake = min(wake, state.blocked_since + self.config.missing_key_warning)
        return max(0.0, wake - now)

    # ----------------------------------------------------------------- rendering

    def _render_ready(self, now: float) -> None:
        ready = [t for t in self.templates if t.ready(now)]
        if not ready:
            return
        commands: list[tuple[str | list[str], float]] = []
        for state in ready:
            state.rendered()
            self._render(state, commands)
        self.watcher.set_watched(set().union(*(t.deps for t in self.templates)))
        self.metrics.watched_dependencies.set(len(self.watcher))
        self.pending_commands.extend(commands)
        self._run_pending_commands(now)

    def _run_pending_commands(self, now: float) -> None:
        """At start-up, templates finish their n-pass renders at different times; holding commands
        until every template has rendered (or is known to be stuck) makes a shared reload run once."""
        if self.pending_commands and self._settled(now):
            commands, self.pending_commands = self.pending_commands, []
            self._run_commands(commands)

    def _settled(self, now: float) -> bool:
        return all(t.rendered_once or t.errored or t.compile_error is not None
                   or (t.blocked_since is not None and now - t.blocked_since >= self.config.missing_key_warning)
                   for t in self.templates)

    def _render(self, state: TemplateState, commands: list[tuple[str | list[str], float]]) -> None:
        started = time.perf_counter()
        result = state.renderer.render(self.watcher, {"haproxy": haproxy_variables(self.config.haproxy)}
                                       if self.config.haproxy else None)
        self.metrics.render_seconds.observe(time.perf_counter() - started)
        state.deps = result.used | state.deps if result.error else result.used
        if result.error:
            state.missing = {}
            self._template_failed(state, result.error)
            return
        if result.missing or result.text is None:
            if state.blocked_since is None:
                state.blocked_since = time.monotonic()
            state.missing = result.missing
            return
        state.missing, state.blocked_since, state.errored = {}, None, False
        state.warned.clear()
        state.rendered_once = True
        self.metrics.rendered()
        log.debug("rendered %s", state.label)
        if self.config.dry:
            self._print_dry(state, result.text)
        elif state.haproxy:
            self._install_haproxy(state, result.text, commands)
        else:
            self._install(state, result.text, commands)
        if self.config.once:
            state.finished = True

    def _template_failed(self, state: TemplateState, error: TemplateError | None) -> None:
        log.error("template %s; the last good output of %s stays", error, state.config.destination)
        self.metrics.render_errors.inc()
        state.errored = True
        if self.config.once:
            state.finished, self._once_failed = True, True

    def _print_dry(self, state: TemplateState, text: str) -> None:
        if text != state.last_dry:
            state.last_dry = text
            self.stdout.write(f"> {state.config.destination}\n{text}")
            self.stdout.flush()

    def _install(self, state: TemplateState, text: str, commands: list[tuple[str | list[str], float]]) -> None:
        template = state.config
        try:
            outcome = write_if_changed(template, text, command_checker(template))
        except OSError as exc:
            log.error("cannot write %s: %s", template.destination, exc.strerror or exc)
            self._once_failure()
            return
        if outcome.check is not None and not outcome.check.ok:
            self._check_failed(state, outcome.check)
        elif outcome.installed:
            self.metrics.installs.inc()
            log.info("installed %s", template.destination)
            if template.command:
                commands.append((template.command, template.command_timeout))

    def _check_failed(self, state: TemplateState, check: CheckResult) -> None:
        self.metrics.check_failures.inc()
        log.error("check of %s failed; %s left as it was:\n  %s", state.label, state.config.destination,
                  "\n  ".join(check.alerts or [check.output.strip()]))
        self._once_failure()

    def _once_failure(self) -> None:
        if self.config.once:
            self._once_failed = True

    def _run_commands(self, commands: list[tuple[str | list[str], float]]) -> None:
        """Each distinct command once per run, in template order; failures are counted, never fatal."""
        seen: set[Any] = set()
        for command, timeout in commands:
            identity = command if isinstance(command, str) else tuple(command)
            if identity in seen:
                continue
            seen.add(identity)
            self.metrics.commands.inc()
            result = run_command(command, timeout, self._command_env())
            if result.ok:
                log.info("command %r done", command)
                log.debug("command %r output: %s", command, result.output.strip()[-500:])
                continue
            self.metrics.command_failures.inc()
            why = f"timed out after {timeout:g}s" if result.timed_out else f"exited {result.returncode}"
            log.error("command %r %s: %s", command, why, result.output.strip()[-500:])
            self._once_failure()

    def _command_env(self) -> dict[str, str]:
        """Commands get the registry address and token, as consul-template's do."""
        env = dict(os.environ, CONSUL_HTTP_ADDR=self.client.base_url)
        if self.config.consul.token:
            env["CONSUL_HTTP_TOKEN"] = self.config.consul.token
        return env

    # ----------------------------------------------------------------- HAProxy

    def _haproxy_controller(self) -> Any:
        """Created on first use; None (plain install, logged) if templater/haproxy is not there."""
        if self.controller is not None or self.config.haproxy is None:
            return self.controller
        factory = self.controller_factory
        if factory is None:
            try:
                from templater.haproxy.controller import HAProxyController as factory  # noqa: N813
            except ImportError as exc:
                log.error("haproxy {} is configured but HAProxy control is unavailable (%s); "
                          "installing %s as a plain file", exc, self.config.haproxy.config)
                self.config = dataclasses.replace(self.config, haproxy=None)
                return None
        self.controller = factory(self.config.haproxy, self.metrics, logging.getLogger("templater.haproxy"))
        return self.controller

    def _install_haproxy(self, state: TemplateState, text: str,
                         commands: list[tuple[str | list[str], float]] | None = None) -> None:
        """render → staged → controller.check → install → controller.apply (restore if a reload fails)."""
        template, controller = state.config, self._haproxy_controller()
        if controller is None:
            self._install(state, text, commands if commands is not None else [])
            return
        destination = os.path.abspath(template.destination)
        if not self.controller_started and read_current(destination) is not None and controller.running(destination):
            self._start_controller(destination)  # attach to what is live before changing it
        try:
            outcome = write_if_changed(template, text, controller.check)
        except OSError as exc:
            log.error("cannot write %s: %s", destination, exc.strerror or exc)
            return
        if outcome.check is not None and not outcome.check.ok:
            self._check_failed(state, outcome.check)
            self._follow_servers_only(state, text, destination)
            return
        if outcome.installed:
            self.metrics.installs.inc()
            log.info("installed %s", destination)
        if not self.controller_started:
            self._start_controller(destination)
        elif outcome.installed:
            self._apply(state, outcome.previous, text, destination)

    def _start_controller(self, destination: str) -> None:
        try:
            self.controller.start(destination)
            self.controller_started = True
        except Exception as exc:  # noqa: BLE001 - HAProxy trouble must not stop the templater
            log.error("could not start HAProxy control with %s: %s", destination, exc)

    def _apply(self, state: TemplateState, previous: bytes | None, text: str, destination: str) -> None:
        try:
            result = self.controller.apply(previous.decode() if previous is not None else None, text,
                                           destination)
        except Exception as exc:  # noqa: BLE001
            log.error("applying %s to HAProxy failed: %s", destination, exc)
            return
        if result.ok:
            log.info("applied %s to HAProxy (%s)", destination, result.kind)
            return
        log.error("HAProxy %s of %s failed: %s\n  %s", result.kind, destination, result.detail,
                  "\n  ".join(result.alerts))
        if result.kind == "reload":
            restore(destination, previous, state.config.perms)
            log.error("restored the last good %s", destination)
            self._follow_servers_only(state, text, destination)
        self._once_failure()

    def _follow_servers_only(self, state: TemplateState, text: str, destination: str) -> None:
        """A refused structure (bad fragment, failed reload) must not freeze scaling: install the last good
        structure with the new render's servers and apply that, through the Runtime API in runtime mode."""
        good = read_current(destination)
        if good is None or not self.controller_started:
            return
        merged = merge_servers(good.decode(), text)
        try:
            outcome = write_if_changed(state.config, merged, self.controller.check)
        except OSError as exc:
            log.error("cannot write %s: %s", destination, exc.strerror or exc)
            return
        if not outcome.installed:
            return
        self.metrics.installs.inc()
        log.warning("kept the last good structure of %s and applied the new servers only", destination)
        try:
            result = self.controller.apply(good.decode(), merged, destination)
        except Exception as exc:  # noqa: BLE001
            log.error("applying the servers of %s failed: %s", destination, exc)
            result = None
        if result is None or not result.ok:
            restore(destination, good, state.config.perms)

    # ----------------------------------------------------------------- failures and warnings

    def _registry_failed(self, dependency: Dependency, exc: Exception) -> None:
        """Attempts exhausted: -once (or a finite retry budget) ends the run with a clear message."""
        giving_up = isinstance(exc, RegistryUnavailable | PermissionDenied) and (
            self.config.once or self.config.consul.retry.attempts > 0)
        if giving_up:
            log.error("giving up on the registry at %s while reading %s: %s", self.client.base_url,
                      dependency, exc)
            self.exit_code = EXIT_REGISTRY
        elif self.config.once:
            log.error("cannot read %s: %s", dependency, exc)
            self.exit_code = EXIT_FAILED

    def _warn_blocked(self, now: float) -> None:
        """A template held back by a missing key (or silent registry) says so after a few seconds."""
        for state in self.templates:
            if state.blocked_since is None or now - state.blocked_since < self.config.missing_key_warning:
                continue
            for dependency, reason in state.missing.items():
                if dependency in state.warned:
                    continue
                state.warned.add(dependency)
                error = self.watcher.error_of(dependency)
                log.warning("%s is not rendered yet: %s%s", state.label, reason,
                            f" (last error: {error})" if error else "")

    # ----------------------------------------------------------------- sources, reload, shutdown

    def _recompile(self, paths: set[str], now: float) -> None:
        """A file changed under a template's directory (the source or a partial it includes)."""
        for state in self.templates:
            if not any(state.watches_file(path) for path in paths):
                continue
            if state.compile():
                self._template_failed(state, state.compile_error)
                continue
            log.info("template %s changed on disk; rendering %s", state.label, state.config.destination)
            state.mark_dirty(now, immediate=True)

    def _watch_sources(self) -> None:
        if self.config.once:
            return
        directories = {t.renderer.source_dir for t in self.templates if t.renderer.source_dir}
        if not directories:
            return
        self.observer = SourceObserver(directories, lambda path: any(t.watches_file(path) for t in self.templates),
                                       self.source_changed)
        self.observer.start()

    def _reload(self) -> None:
        """SIGHUP: re-read config and templates; keep watched data when the registry is the same."""
        if self.config_loader is None:
            return
        try:
            config = self.config_loader()
        except ConfigError as exc:
            log.error("reload failed, keeping the running config: %s", exc)
            return
        log.info("reloading configuration (%d templates)", len(config.templates))
        if config.consul != self.config.consul or config.block_query_wait != self.config.block_query_wait:
            self.watcher.stop()
            self.client.close()
            self.client, self.watcher = self._connect(config)
        if config.haproxy != self.config.haproxy and self.controller is not None:
            self._stop_controller(keep_haproxy=True)  # the new controller attaches: no restart, no lost request
        self.config = config
        if self.observer is not None:
            self.observer.stop()
        self.templates = self._states(config)
        self._watch_sources()

    def _stop_controller(self, keep_haproxy: bool = False) -> None:
        try:
            if keep_haproxy:
                self.controller.detach()
            else:
                self.controller.stop()
        except Exception as exc:  # noqa: BLE001
            log.error("stopping HAProxy control: %s", exc)
        self.controller, self.controller_started = None, False

    def shutdown(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer = None
        self.watcher.stop()
        if self.controller is not None:
            # -once renders, installs and applies, then leaves HAProxy serving (a pre-start step)
            self._stop_controller(keep_haproxy=self.config.once)
        self.client.close()


def run_in_thread(runner: Runner) -> threading.Thread:
    """For tests and the local stack: the loop in a background thread (stop with request_stop)."""
    thread = threading.Thread(target=runner.run, name="templater-runner", daemon=True)
    thread.start()
    return thread
