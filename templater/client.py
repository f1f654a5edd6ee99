"""The registry client: Consul's HTTP API over requests, with blocking reads and patient retries.

It talks only Consul's documented wire format, so the same client works against the edgestack
registry and a real Consul agent. Retries never give up by default (consul-template exits after
about five minutes, a top complaint); the token travels in X-Consul-Token and is never logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_never
from tenacity.stop import stop_base
from tenacity.wait import wait_exponential

from templater.config import RetryConfig, normalize_address

log = logging.getLogger("templater.client")


class RegistryError(Exception):
    """A request the registry answered with an error we cannot fix by waiting."""


class RegistryUnavailable(RegistryError):
    """No answer (connection refused, timeout, 5xx): worth retrying with backoff."""


class PermissionDenied(RegistryError):
    """403: the token lacks a permission. Retried (an operator may fix the ACL) but reported loudly."""


class Stopped(Exception):
    """The caller asked the retry loop to give up (shutdown, or the dependency is no longer watched)."""


@dataclass(frozen=True)
class QueryResult:
    """One read: HTTP status, decoded JSON (None on 404) and X-Consul-Index."""

    status: int
    data: Any
    index: int


def next_index(previous: int, reported: int) -> int:
    """Consul's client rules: an index that went backwards means the state was reset, so start
    over from 0 (non-blocking); otherwise never block on an index below 1."""
    if reported < previous:
        return 0
    return max(reported, 1)


class _StopOnEvent(stop_base):
    """tenacity stop condition: give up as soon as `event` is set."""

    def __init__(self, event: threading.Event | None):
        self.event = event

    def __call__(self, retry_state: RetryCallState) -> bool:
        return bool(self.event and self.event.is_set())


class ConsulClient:
    """Thread-safe enough for one blocking request per watcher thread over a shared pool.

    The pool is sized for one parked connection per dependency (a 1,000-service template parks
    1,001); a smaller pool would close and reopen connections on every long-poll."""

    def __init__(self, address: str, token: str | None = None, retry: RetryConfig | None = None,
                 pool_size: int = 16384, on_retry: Callable[[str, Exception, float], None] | None = None):
        self.base_url = normalize_address(address)
        self.retry_config = retry or RetryConfig()
        self.on_retry = on_retry
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if token:
            self.session.headers["X-Consul-Token"] = token
        self._warned_anonymous = bool(token)

    def __repr__(self) -> str:  # never show the token
        return f"ConsulClient({self.base_url})"

    def close(self) -> None:
        self.session.close()

    def url(self, path: str) -> str:
        return self.base_url + "/v1/" + quote(path.lstrip("/"), safe="/:")

    def get_once(self, path: str, params: dict[str, Any] | None = None, *, index: int = 0,
                 wait: float | None = None, stale: bool = True, allow_404: bool = False) -> QueryResult:
        """One GET, no retries. Blocking when index > 0: `?index=N&wait=Ns`."""
        query: dict[str, Any] = dict(params or {})
        if stale:
            query["stale"] = ""
        timeout = 10.0
        if index > 0 and wait:
            query["index"], query["wait"] = index, f"{int(wait * 1000)}ms"
            timeout = wait + wait / 16 + 10.0
        try:
            response = self.session.get(self.url(path), params=query, timeout=(5.0, timeout))
        except requests.RequestException as exc:
            raise RegistryUnavailable(f"{self.base_url} unreachable: {_short(exc)}") from exc
        return self._result(path, response, allow_404)

    def _warn_if_anonymous_under_deny(self, response: requests.Response) -> None:
        """No token against a default-deny registry: lists come back filtered and silently short."""
        if not self._warned_anonymous and response.headers.get("X-Consul-Default-ACL-Policy") == "deny":
            self._warned_anonymous = True
            log.warning("no ACL token is set and %s denies by default: reads use the anonymous token and "
                        "listings may be filtered (set -token, consul { token } or CONSUL_HTTP_TOKEN)",
                        self.base_url)

    def _result(self, path: str, response: requests.Response, allow_404: bool) -> QueryResult:
        self._warn_if_anonymous_under_deny(response)
        status = response.status_code
        index = _index_header(response)
        if status == 200:
            try:
                return QueryResult(status, response.json() if response.content else None, index)
            except ValueError as exc:
                raise RegistryError(f"GET /v1/{path}: invalid JSON from {self.base_url}") from exc
        if status == 404 and allow_404:
            return QueryResult(status, None, index)
        body = response.text.strip()[:300]
        if status == 403:
            raise PermissionDenied(f"permission denied reading /v1/{path} from {self.base_url}: {body} "
                                   "(check the token: -token, consul { token } or CONSUL_HTTP_TOKEN)")
        if status >= 500 or status == 429:
            raise RegistryUnavailable(f"GET /v1/{path}: {status} {body}")
        raise RegistryError(f"GET /v1/{path}: {status} {body}")

    def get(self, path: str, params: dict[str, Any] | None = None, *, index: int = 0,
            wait: float | None = None, stale: bool = True, allow_404: bool = False,
            stop: threading.Event | None = None, attempts: int | None = None) -> QueryResult:
        """get_once with capped exponential backoff; forever unless retry.attempts (or `attempts`) > 0."""
        limit = self.retry_config.attempts if attempts is None else attempts
        retrying = Retrying(
            retry=retry_if_exception_type((RegistryUnavailable, PermissionDenied)),
            wait=wait_exponential(multiplier=self.retry_config.backoff, max=self.retry_config.max_backoff),
            stop=(stop_after_attempt(limit) if limit > 0 else stop_never) | _StopOnEvent(stop),
            sleep=(stop.wait if stop else _sleep),
            before_sleep=lambda state: self._report_retry(path, state),
            reraise=True,
        )
        result = retrying(self.get_once, path, params, index=index, wait=wait, stale=stale,
                          allow_404=allow_404)
        if stop and stop.is_set():
            raise Stopped(path)
        return result

    def _report_retry(self, path: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        if self.on_retry and exc is not None:
            self.on_retry(path, exc, delay)
        else:
            log.warning("retrying /v1/%s in %.2fs (attempt %d): %s", path, delay, state.attempt_number, exc)

    def agent_node_name(self) -> str:
        """The local agent's node name: node() with no argument means this node, as in consul-template."""
        result = self.get("agent/self", stale=False)
        return str(((result.data or {}).get("Config") or {}).get("NodeName", ""))


def _sleep(seconds: float) -> None:
    threading.Event().wait(seconds)


def _index_header(response: requests.Response) -> int:
    try:
        return int(response.headers.get("X-Consul-Index", "0"))
    except ValueError:
        return 0


def _short(exc: Exception) -> str:
    """requests' connection errors nest three levels deep; keep the last, human part."""
    text = str(exc)
    for marker in ("Errno", "Connection refused", "timed out", "Name or service not known"):
        at = text.find(marker)
        if at >= 0:
            return text[at:].split("'))")[0].rstrip(")'\"")
    return text[:200]
