"""Consul's blocking-query rules, shared by every read endpoint.

A read names the topics it depends on and a function that computes its result together with two
indexes: the index it *reports* (X-Consul-Index, never 0, never backwards) and the index of what
it actually read (its own change marker, 0 when nothing it reads has ever been written). The read
returns at once when `?index` is absent/0 or its own index is past the client's; otherwise it
parks on its topics until a commit touches one of them or `wait` (+ jitter) runs out.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from registry.durations import DurationError, parse_duration
from registry.store import Store

DEFAULT_WAIT = 300.0  # 5m
MAX_WAIT = 600.0  # 10m


class QueryError(Exception):
    """Bad ?index or ?wait: 400 with Consul's text."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


@dataclass
class Result:
    """A computed read: the body, the index to report and the index of what was read."""

    body: Any
    index: int
    own_index: int | None = None

    @property
    def change_index(self) -> int:
        return self.index if self.own_index is None else self.own_index


def parse_blocking(query: dict[str, str]) -> tuple[int, float]:
    """(min_index, wait seconds) from ?index and ?wait, with Consul's default and cap."""
    raw_index = query.get("index", "")
    try:
        min_index = int(raw_index) if raw_index != "" else 0
        if not 0 <= min_index < 2**64:
            raise ValueError
    except ValueError:
        raise QueryError("Invalid index") from None
    raw_wait = query.get("wait", "")
    if raw_wait == "":
        wait = DEFAULT_WAIT
    else:
        try:
            wait = parse_duration(raw_wait)
        except DurationError:
            raise QueryError("Invalid wait time") from None
        if wait < 0:
            raise QueryError("Invalid wait time")
        if wait == 0:
            wait = DEFAULT_WAIT  # as Consul: no wait (or 0) means the default
    return min_index, min(wait, MAX_WAIT)


async def run_query(store: Store, query: dict[str, str], topics: Iterable[str],
                    compute: Callable[[], Result]) -> Result:
    """Answer now or park until the topics change; always returns a fresh Result."""
    min_index, wait = parse_blocking(query)
    result = compute()
    if min_index == 0 or result.change_index > min_index:
        return _clamp(result)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait + random.uniform(0, wait / 16)
    topic_list = list(topics)
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0 or store.closing:
            return _clamp(result)
        changed = store.watch(topic_list)
        timer = loop.call_at(deadline, _expire, changed)  # not wait_for: no extra future per read
        try:
            await changed
        finally:
            timer.cancel()
            store.unwatch(topic_list, changed)
        result = compute()
        if result.change_index > min_index or loop.time() >= deadline:
            return _clamp(result)


def _expire(changed: asyncio.Future) -> None:
    """The read's wait ran out: answer with what it has, as a wake-up would."""
    if not changed.done():
        changed.set_result(None)


def _clamp(result: Result) -> Result:
    if result.index < 1:
        result.index = 1
    return result
