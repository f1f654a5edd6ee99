"""Prometheus metrics for the templater (consul-template has none: hashicorp/consul-template#1338).

One private registry per Metrics object, so tests and a SIGHUP-rebuilt runner never collide on
prometheus_client's global registry. The HAProxy controller increments the four `haproxy`
counters declared here (issue 6) rather than declaring its own.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

log = logging.getLogger("templater.metrics")


class Metrics:
    """Every counter and gauge the templater exports, named `templater_*`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._last_success: float | None = None
        self._server: Any = None

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"templater_{name}", doc, registry=self.registry)

        self.renders = counter("renders", "Templates rendered completely (all data present).")
        self.render_errors = counter("render_errors", "Renders that failed with a template error.")
        self.check_failures = counter("check_failures", "Staged files rejected by the check command.")
        self.installs = counter("installs", "Files installed (content changed and passed the check).")
        self.commands = counter("commands", "Commands run after installs.")
        self.command_failures = counter("command_failures", "Commands that failed or timed out.")
        self.reloads = counter("reloads", "HAProxy reloads through the master CLI.")
        self.reload_failures = counter("reload_failures", "HAProxy reloads that reported Success=0.")
        self.runtime_updates = counter("runtime_updates", "Server changes applied through the Runtime API.")
        self.haproxy_restarts = counter("haproxy_restarts", "Supervised HAProxy processes restarted.")
        self.watched_dependencies = Gauge("templater_watched_dependencies",
                                          "Registry queries (and files) currently watched.",
                                          registry=self.registry)
        since = Gauge("templater_seconds_since_last_render",
                      "Seconds since the last successful render (-1 before the first).", registry=self.registry)
        since.set_function(self._seconds_since_success)
        self.render_seconds = Histogram("templater_render_seconds", "Time to render one template.",
                                        registry=self.registry,
                                        buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))

    def rendered(self) -> None:
        self.renders.inc()
        self._last_success = time.monotonic()

    def _seconds_since_success(self) -> float:
        return -1.0 if self._last_success is None else time.monotonic() - self._last_success

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def value(self, name: str) -> float:
        """Current value of one sample by full name (for tests and `status` output)."""
        found = self.registry.get_sample_value(name)
        return 0.0 if found is None else found

    def serve(self, address: str) -> None:
        """Serve /metrics on host:port (host defaults to 127.0.0.1: loopback by default)."""
        host, _, port = address.rpartition(":")
        self._server, _ = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        log.info("metrics on http://%s:%s/metrics", host or "127.0.0.1", port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
