"""The watcher: one thread running one blocking query per unique dependency, shared by all templates.

Threads + requests (DESIGN.md): each view parks in a long-poll (`?index=N&wait=60s&stale`) and
reports only real changes — a new index whose parsed value differs from the last one — so a
write that does not change what a template reads wakes nobody. When the registry goes away each
view retries forever with capped backoff while the last data (and the last good output) stay.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from templater.client import ConsulClient, RegistryError, Stopped, next_index
from templater.dependencies import Dependency

log = logging.getLogger("templater.watcher")

SPIN_FLOOR = 0.05  # an unchanged answer faster than this is throttled (guards against hot loops)
ERROR_LOG_INTERVAL = 5.0


class View(threading.Thread):
    """One dependency's blocking loop; its latest value is read by renders on the runner thread."""

    def __init__(self, dependency: Dependency, client: ConsulClient, block_wait: float,
                 on_change: Callable[[Dependency], None], on_error: Callable[[Dependency, Exception], None]):
        super().__init__(name=f"view:{dependency.key()}", daemon=True)
        self.dependency, self.client, self.block_wait = dependency, client, block_wait
        self.on_change, self.on_error = on_change, on_error
        self.stopped = threading.Event()
        self.has_data = False
        self.value: Any = None
        self.index = 0
        self.last_error: Exception | None = None

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                fetched = self.dependency.fetch(self.client, self.index, self.block_wait, self.stopped)
            except Stopped:
                return
            except RegistryError as exc:  # attempts exhausted or a non-retryable answer
                self.last_error = exc
                self.on_error(self.dependency, exc)
                self.stopped.wait(self.client.retry_config.max_backoff)
                continue
            except Exception as exc:  # noqa: BLE001 - a parsing bug must not kill the watch silently
                self.last_error = exc
                self.on_error(self.dependency, exc)
                self.stopped.wait(1.0)
                continue
            if self.stopped.is_set():
                return
            self.last_error = None
            changed = self._accept(fetched.value, fetched.index)
            if changed:
                self.on_change(self.dependency)
            elif time.monotonic() - started < SPIN_FLOOR:
                self.stopped.wait(SPIN_FLOOR)

    def _accept(self, value: Any, index: int) -> bool:
        """Store the answer; True only when the value really changed (or is the first one)."""
        unchanged_index = self.has_data and index == self.index
        if self.dependency.consul_index:
            index = next_index(self.index, index)
        self.index = index
        if unchanged_index:
            return False
        if self.has_data and self.dependency.comparable(value) == self.dependency.comparable(self.value):
            self.value = value  # fresher details (check output) for the next render, but no render now
            return False
        self.value, self.has_data = value, True
        return True


class Watcher:
    """The set of views; renders look data up here, the runner tells it what to watch."""

    def __init__(self, client: ConsulClient, on_change: Callable[[Dependency], None], block_wait: float = 60.0,
                 on_error: Callable[[Dependency, Exception], None] | None = None):
        self.client, self.on_change, self.block_wait, self.on_error = client, on_change, block_wait, on_error
        self.views: dict[Dependency, View] = {}
        self.lock = threading.Lock()
        self._last_error_log = 0.0
        self._suppressed = 0

    def lookup(self, dependency: Dependency) -> tuple[bool, Any]:
        """(has_data, value) — has_data False means "not answered yet": the render must wait."""
        view = self.views.get(dependency)
        if view is None or not view.has_data:
            return False, None
        return True, view.value

    def error_of(self, dependency: Dependency) -> Exception | None:
        view = self.views.get(dependency)
        return view.last_error if view else None

    def set_watched(self, dependencies: Iterable[Dependency]) -> None:
        """Start views for new dependencies and stop (and forget) the ones nobody reads any more."""
        wanted = set(dependencies)
        with self.lock:
            for dependency in [d for d in self.views if d not in wanted]:
                self.views.pop(dependency).stop()
                log.debug("stopped watching %s", dependency)
            for dependency in wanted - set(self.views):
                view = View(dependency, self.client, self.block_wait, self.on_change, self._report_error)
                self.views[dependency] = view
                view.start()
                log.debug("watching %s", dependency)

    def stop(self) -> None:
        with self.lock:
            for view in self.views.values():
                view.stop()
            self.views.clear()

    def __len__(self) -> int:
        return len(self.views)

    def _report_error(self, dependency: Dependency, exc: Exception) -> None:
        level = logging.ERROR if isinstance(exc, RegistryError) else logging.WARNING
        self.report_retry(dependency.key(), exc, 0.0, level)
        if self.on_error:
            self.on_error(dependency, exc)

    def report_retry(self, what: str, exc: Exception, delay: float, level: int = logging.WARNING) -> None:
        """Many views fail together when the registry goes away: log one line per interval, not 1,000."""
        now = time.monotonic()
        with self.lock:
            if now - self._last_error_log < ERROR_LOG_INTERVAL:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last_error_log = self._suppressed, 0, now
        more = f" (+{suppressed} similar)" if suppressed else ""
        retry = f"; retrying in {delay:.1f}s" if delay else ""
        log.log(level, "blocked on %s: %s%s%s; last good output stays installed", what, exc, retry, more)


class SourceObserver:
    """Template sources (and partials beside them) watched with watchdog: an edit re-renders at once.

    Editors save by rename and emit several events per save; the runner coalesces them. Only
    paths the runner calls relevant (a source, or a partial with its suffix) are reported, so logs,
    outputs and staged files written into the same directory never trigger a render.
    """

    def __init__(self, directories: Iterable[str], relevant: Callable[[str], bool],
                 on_change: Callable[[str], None]):
        from watchdog.observers import Observer  # noqa: PLC0415 - not needed by -once / -dry runs

        self.relevant = relevant
        self.on_change = on_change
        self.observer = Observer()
        self.observer.daemon = True
        handler = _SourceHandler(self)
        for directory in sorted(set(directories)):
            if os.path.isdir(directory):
                self.observer.schedule(handler, directory, recursive=True)

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        if self.observer.is_alive():
            self.observer.join(timeout=5)


class _SourceHandler:
    """Minimal watchdog handler: every relevant file event → on_change(path)."""

    def __init__(self, owner: SourceObserver):
        self.owner = owner

    def dispatch(self, event: object) -> None:
        if getattr(event, "is_directory", False) or getattr(event, "event_type", "") in ("opened", "closed_no_write"):
            return
        for attr in ("src_path", "dest_path"):
            path = getattr(event, attr, "")
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if path and not os.path.basename(path).startswith(".") and self.owner.relevant(os.path.abspath(path)):
                self.owner.on_change(os.path.abspath(path))
