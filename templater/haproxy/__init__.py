"""HAProxy control for the templater: binary lookup, process supervision, master CLI, Runtime API,
config model + diff, and the controller that ties them together (issue 6).

The templater creates one `HAProxyController(settings, metrics, log)` for the `haproxy {}` block and
calls `start`, `check`, `apply` and `stop` on it.
"""

from __future__ import annotations

from templater.haproxy.controller import ApplyResult, CheckResult, HAProxyController

__all__ = ["ApplyResult", "CheckResult", "HAProxyController"]
