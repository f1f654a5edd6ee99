"""Durable storage for the store: SQLite in WAL mode, or nothing at all with -dev.

The store keeps the whole state in memory and hands every write to a persistence object as a
batch of row changes. A write is acknowledged only after its batch is durable, so the SQLite
writer runs in its own thread and commits *groups* of batches: 32 concurrent clients share one
fsync instead of queueing for 32 (group commit, as etcd's WAL does). The store never touches SQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("registry.persistence")

#: Tables the store persists; each is `key TEXT PRIMARY KEY, value TEXT` holding JSON.
TABLES = ("nodes", "services", "checks", "kv", "kv_tombstones", "sessions", "indexes",
          "acl_tokens", "acl_policies", "meta")

Snapshot = dict[str, dict[str, Any]]


@dataclass
class Batch:
    """One acknowledged write: the rows it changes (value None = delete)."""

    rows: list[tuple[str, str, Any]] = field(default_factory=list)

    def put(self, table: str, key: str, value: Any) -> None:
        self.rows.append((table, key, value))

    def delete(self, table: str, key: str) -> None:
        self.rows.append((table, key, None))


class MemoryPersistence:
    """-dev mode: nothing survives the process, and writes are acknowledged at once."""

    durable = False

    def load(self) -> Snapshot:
        return {table: {} for table in TABLES}

    async def commit(self, batch: Batch) -> None:
        return None

    def close(self) -> None:
        return None


class SQLitePersistence:
    """SQLite (WAL, synchronous=FULL) under the data dir, with a group-commit writer thread."""

    durable = True

    def __init__(self, data_dir: Path):
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.path = data_dir / "registry.db"
        self._queue: queue.Queue[tuple[Batch, asyncio.Future, asyncio.AbstractEventLoop] | None] = queue.Queue()
        self._conn = self._connect()
        self._thread = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for table in TABLES:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        return conn

    def load(self) -> Snapshot:
        snapshot: Snapshot = {}
        for table in TABLES:
            rows = self._conn.execute(f"SELECT key, value FROM {table}").fetchall()
            snapshot[table] = {key: json.loads(value) for key, value in rows}
        return snapshot

    async def commit(self, batch: Batch) -> None:
        """Wait until the batch is on disk (fsync'd WAL)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((batch, future, loop))
        await future

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                group.append(more)
            error = self._write_group([batch for batch, _, _ in group])
            for _, future, loop in group:
                loop.call_soon_threadsafe(_settle, future, error)

    def _write_group(self, batches: list[Batch]) -> Exception | None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for batch in batches:
                for table, key, value in batch.rows:
                    if value is None:
                        self._conn.execute(f"DELETE FROM {table} WHERE key = ?", (key,))
                    else:
                        self._conn.execute(f"INSERT OR REPLACE INTO {table} (key, value) VALUES (?, ?)",
                                           (key, json.dumps(value, separators=(",", ":"))))
            self._conn.execute("COMMIT")
            return None
        except Exception as exc:  # noqa: BLE001 - reported to every waiting writer
            log.error("durable write failed: %s", exc)
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return exc

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._conn.close()


def _settle(future: asyncio.Future, error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def open_persistence(data_dir: Path | None) -> MemoryPersistence | SQLitePersistence:
    """SQLite under data_dir, or memory when there is none (-dev)."""
    return SQLitePersistence(data_dir) if data_dir else MemoryPersistence()
