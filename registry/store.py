"""The registry's state and its one global write index.

Everything lives in memory (the read path never waits for disk); every write goes through a
transaction that (1) mutates memory synchronously on the event loop, so writes are totally ordered
without locks, (2) bumps the global index once, (3) records the *topics* it touched, and
(4) is acknowledged only after persistence made it durable. Blocking queries park on topics, so a
parked read wakes only when something it reads changed.

Topics (strings, one index each, persisted so indexes never go backwards after a restart):
  nodes · node:<name> · services · service:<name> · checks · kv · kv:<key> (wake-only) ·
  kvp:<prefix> (wake-only) · sessions · session:<id> · session_node:<node> · acl
Records are kept in Consul's wire shape so reads serialise them without conversion.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedDict

from registry.durations import format_duration, parse_duration
from registry.persistence import Batch, MemoryPersistence, SQLitePersistence

log = logging.getLogger("registry.store")

ServiceKey = tuple[str, str]  # (node, service ID)
CheckKey = tuple[str, str]  # (node, check ID)

#: Fields that carry indexes; ignored when deciding whether an upsert changed anything.
_INDEX_FIELDS = ("CreateIndex", "ModifyIndex")

HEALTH_ORDER = {"passing": 0, "warning": 1, "critical": 2, "maintenance": 3}


class StoreError(Exception):
    """A write the store refuses; `status` and the text follow Consul's reply."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass
class Txn:
    """One write in progress: its index, the rows to persist and the topics it touched."""

    index: int
    batch: Batch = field(default_factory=Batch)
    topics: set[str] = field(default_factory=set)

    def touch(self, *topics: str) -> None:
        self.topics.update(topics)


def _pkey(*parts: str) -> str:
    return json.dumps(list(parts))


def _same(old: dict | None, new: dict) -> bool:
    if old is None:
        return False
    strip = lambda rec: {k: v for k, v in rec.items() if k not in _INDEX_FIELDS}  # noqa: E731
    return strip(old) == strip(new)


class Store:
    """Catalog, KV, sessions and ACL state with blocking-query wake-ups."""

    def __init__(self, persistence: MemoryPersistence | SQLitePersistence, node_name: str,
                 datacenter: str = "dc1"):
        self.persistence = persistence
        self.node_name = node_name
        self.datacenter = datacenter
        snap = persistence.load()
        self.nodes: dict[str, dict] = dict(snap["nodes"])
        self.services: dict[ServiceKey, dict] = {tuple(json.loads(k)): v for k, v in snap["services"].items()}
        self.checks: dict[CheckKey, dict] = {tuple(json.loads(k)): v for k, v in snap["checks"].items()}
        self.kv: SortedDict = SortedDict(snap["kv"])
        self.kv_tombstones: SortedDict = SortedDict(snap["kv_tombstones"])
        self.sessions: dict[str, dict] = dict(snap["sessions"])
        self.acl_tokens: dict[str, dict] = dict(snap["acl_tokens"])
        self.acl_policies: dict[str, dict] = dict(snap["acl_policies"])
        self.meta: dict[str, Any] = dict(snap["meta"])
        self.indexes: dict[str, int] = dict(snap["indexes"])
        self.index: int = self.indexes.get("_global", 0)
        self.durable_index: int = self.index
        self._durable_waiters: list[tuple[int, int, asyncio.Future]] = []
        self._waiter_seq = itertools.count()
        self.node_services: dict[str, dict[str, dict]] = {}
        self.node_checks: dict[str, dict[str, dict]] = {}
        #: service name → its instances' keys: a read of one service never scans the whole catalog
        self.service_keys: dict[str, set[ServiceKey]] = {}
        for (node, sid), svc in self.services.items():
            self.node_services.setdefault(node, {})[sid] = svc
            self.service_keys.setdefault(svc["Service"], set()).add((node, sid))
        for (node, cid), chk in self.checks.items():
            self.node_checks.setdefault(node, {})[cid] = chk
        self._waiters: dict[str, set[asyncio.Future]] = {}
        self.closing = False
        self.failure: Exception | None = None
        #: Called once when the disk refuses a write (the agent stops itself).
        self.on_fatal: Callable[[Exception], None] | None = None
        self._lock_delays: dict[str, float] = {}
        self._session_timers: dict[str, asyncio.TimerHandle] = {}
        #: Called with each committed Txn (DNS cache, check runners, ...).
        self.commit_listeners: list[Callable[[Txn], None]] = []

    # ------------------------------------------------------------------ transactions

    def begin(self) -> Txn:
        if self.failure is not None:
            raise StoreError(500, f"storage failure, the agent is stopping: {self.failure}")
        return Txn(self.index + 1)

    def _storage_failed(self, exc: Exception) -> None:
        """A write that memory holds but the disk refused: stop rather than serve a state a restart would lose.

        Nothing the failed write touched was acknowledged or shown to a reader (replies wait for
        durability), so restarting from the disk is consistent, as etcd does on a WAL write failure.
        """
        self.failure = exc
        log.critical("durable write failed (%s): refusing further requests and stopping", exc)
        for _, _, future in self._durable_waiters:
            if not future.done():
                future.set_exception(StoreError(500, f"storage failure, the agent is stopping: {exc}"))
        self._durable_waiters.clear()
        if self.on_fatal is not None:
            self.on_fatal(exc)
        raise StoreError(500, f"storage failure, the agent is stopping: {exc}")

    async def commit(self, txn: Txn) -> int:
        """Make txn durable and wake what it touched; returns the index it was written at."""
        if not txn.batch.rows and not txn.topics:
            return self.index
        self.index = txn.index
        self.indexes["_global"] = txn.index
        txn.batch.put("indexes", "_global", txn.index)
        for topic in txn.topics:
            if topic.startswith(("kv:", "kvp:")):
                continue
            self.indexes[topic] = txn.index
            txn.batch.put("indexes", topic, txn.index)
        try:
            await self.persistence.commit(txn.batch)
        except Exception as exc:
            self._storage_failed(exc)
        self._mark_durable(txn.index)
        self._wake(txn.topics)
        for listener in self.commit_listeners:
            try:
                listener(txn)
            except Exception:  # noqa: BLE001 - a listener must never fail a write
                log.exception("commit listener failed")
        return txn.index

    def _mark_durable(self, index: int) -> None:
        self.durable_index = max(self.durable_index, index)
        while self._durable_waiters and self._durable_waiters[0][0] <= self.durable_index:
            _, _, future = heapq.heappop(self._durable_waiters)
            if not future.done():
                future.set_result(None)

    async def wait_durable(self, index: int | None = None) -> None:
        """Return once every write up to index (default: everything applied so far) is on disk.

        Reads answer from memory, which runs ahead of the disk by at most one group commit; a
        reply waits here so that no client ever sees data (or an index) that a crash could take
        back. With nothing in flight this returns at once.
        """
        index = self.index if index is None else index
        if self.failure is not None:
            raise StoreError(500, f"storage failure, the agent is stopping: {self.failure}")
        if self.durable_index >= index:
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._durable_waiters, (index, next(self._waiter_seq), future))
        await future

    def topic_index(self, topic: str) -> int:
        return self.indexes.get(topic, 0)

    # ------------------------------------------------------------------ watching

    def watch(self, topics: list[str]) -> asyncio.Future:
        """A future resolved by the next commit that touches any of topics; unwatch() it when done.

        No done-callback: with 1,000 reads parked on one key, a wake-up then costs one set_result and
        one task step per read instead of three scheduled callbacks (bench/kv_bench.py measures it).
        """
        future = asyncio.get_running_loop().create_future()
        for topic in topics:
            self._waiters.setdefault(topic, set()).add(future)
        return future

    def unwatch(self, topics: list[str], future: asyncio.Future) -> None:
        """Forget a watch (woken, timed out or cancelled); _wake already dropped the woken topic's set."""
        for topic in topics:
            waiters = self._waiters.get(topic)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[topic]

    def wake_all(self) -> None:
        """On shutdown: every parked read answers now (with what it has) instead of holding the stop."""
        self.closing = True
        self._wake(set(self._waiters))

    def _wake(self, topics: set[str]) -> None:
        for topic in topics:
            waiters = self._waiters.pop(topic, None)
            for future in waiters or ():
                if not future.done():
                    future.set_result(None)

    # ------------------------------------------------------------------ catalog: low-level upserts

    def _service_topics(self, node: str) -> list[str]:
        return [f"service:{svc['Service']}" for svc in self.node_services.get(node, {}).values()]

    def upsert_node(self, txn: Txn, node: dict) -> None:
        name = node["Node"]
        old = self.nodes.get(name)
        record = {**node, "CreateIndex": old["CreateIndex"] if old else txn.index, "ModifyIndex": txn.index}
        if _same(old, record):
            return
        self.nodes[name] = record
        txn.batch.put("nodes", name, record)
        txn.touch("nodes", f"node:{name}", *self._service_topics(name))

    def upsert_service(self, txn: Txn, node: str, service: dict) -> None:
        sid = service["ID"]
        old = self.services.get((node, sid))
        record = {**service, "CreateIndex": old["CreateIndex"] if old else txn.index, "ModifyIndex": txn.index}
        if _same(old, record):
            return
        self.services[(node, sid)] = record
        self.node_services.setdefault(node, {})[sid] = record
        if old is not None and old["Service"] != service["Service"]:
            self._forget_service_key(old["Service"], (node, sid))
        self.service_keys.setdefault(service["Service"], set()).add((node, sid))
        txn.batch.put("services", _pkey(node, sid), record)
        txn.touch(f"node:{node}", f"service:{service['Service']}")
        if old is None or old["Service"] != service["Service"] or old["Tags"] != service["Tags"]:
            txn.touch("services")
        if old is not None and old["Service"] != service["Service"]:
            txn.touch(f"service:{old['Service']}")
        for check in self.node_checks.get(node, {}).values():
            if check["ServiceID"] == sid and (check["ServiceName"] != service["Service"]
                                              or check["ServiceTags"] != service["Tags"]):
                self.upsert_check(txn, {**check, "ServiceName": service["Service"],
                                        "ServiceTags": list(service["Tags"])})

    def upsert_check(self, txn: Txn, check: dict) -> bool:
        """Insert or replace a check; returns whether anything changed."""
        node, cid = check["Node"], check["CheckID"]
        old = self.checks.get((node, cid))
        record = {**check, "CreateIndex": old["CreateIndex"] if old else txn.index, "ModifyIndex": txn.index}
        if _same(old, record):
            return False
        self.checks[(node, cid)] = record
        self.node_checks.setdefault(node, {})[cid] = record
        txn.batch.put("checks", _pkey(node, cid), record)
        txn.touch("checks", f"node:{node}", *self._check_service_topics(node, record))
        if record["Status"] == "critical" and (old is None or old["Status"] != "critical"):
            self._invalidate_sessions_for_check(txn, node, cid)
        return True

    def _check_service_topics(self, node: str, check: dict) -> list[str]:
        if check.get("ServiceID"):
            svc = self.services.get((node, check["ServiceID"]))
            return [f"service:{svc['Service']}"] if svc else []
        return self._service_topics(node)

    def delete_check(self, txn: Txn, node: str, cid: str) -> bool:
        check = self.checks.pop((node, cid), None)
        if check is None:
            return False
        self.node_checks.get(node, {}).pop(cid, None)
        txn.batch.delete("checks", _pkey(node, cid))
        txn.touch("checks", f"node:{node}", *self._check_service_topics(node, check))
        self._invalidate_sessions_for_check(txn, node, cid)
        return True

    def delete_service(self, txn: Txn, node: str, sid: str) -> bool:
        svc = self.services.get((node, sid))
        if svc is None:
            return False
        for cid, check in list(self.node_checks.get(node, {}).items()):
            if check["ServiceID"] == sid:
                self.delete_check(txn, node, cid)
        del self.services[(node, sid)]
        self.node_services.get(node, {}).pop(sid, None)
        self._forget_service_key(svc["Service"], (node, sid))
        txn.batch.delete("services", _pkey(node, sid))
        txn.touch("services", f"node:{node}", f"service:{svc['Service']}")
        return True

    def _forget_service_key(self, name: str, key: ServiceKey) -> None:
        keys = self.service_keys.get(name)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.service_keys[name]

    def delete_node(self, txn: Txn, node: str) -> bool:
        if node not in self.nodes:
            return False
        for sid in list(self.node_services.get(node, {})):
            self.delete_service(txn, node, sid)
        for cid in list(self.node_checks.get(node, {})):
            self.delete_check(txn, node, cid)
        del self.nodes[node]
        txn.batch.delete("nodes", node)
        txn.touch("nodes", f"node:{node}")
        for sid, session in list(self.sessions.items()):
            if session["Node"] == node:
                self._invalidate_session(txn, sid)
        return True

    # ------------------------------------------------------------------ catalog: reads

    def instances(self, service: str) -> list[tuple[dict, dict, list[dict]]]:
        """(node, service, checks) for each instance of a service, sorted by node then service ID.

        Checks are the node-level ones followed by the instance's own, as /v1/health/service shows them.
        """
        result = []
        for node_name, sid in self.service_keys.get(service, ()):
            svc = self.services[(node_name, sid)]
            node = self.nodes.get(node_name)
            if node is None:
                continue
            checks = [c for c in self.node_checks.get(node_name, {}).values()
                      if not c["ServiceID"] or c["ServiceID"] == svc["ID"]]
            checks.sort(key=lambda c: (c["ServiceID"] != "", c["CheckID"]))
            result.append((node, svc, checks))
        result.sort(key=lambda item: (item[0]["Node"], item[1]["ID"]))
        return result

    @staticmethod
    def aggregated_status(checks: list[dict]) -> str:
        """Worst status of the checks, maintenance > critical > warning > passing (none: passing)."""
        worst = "passing"
        for check in checks:
            status = check["Status"]
            if check["CheckID"] == "_node_maintenance" or check["CheckID"].startswith("_service_maintenance:"):
                status = "maintenance"
            if HEALTH_ORDER.get(status, 2) > HEALTH_ORDER[worst]:
                worst = status
        return worst

    def service_names(self) -> dict[str, list[str]]:
        """name → distinct tags (sorted), as /v1/catalog/services shows it."""
        names: dict[str, set[str]] = {}
        for svc in self.services.values():
            names.setdefault(svc["Service"], set()).update(svc["Tags"] or [])
        return {name: sorted(tags) for name, tags in sorted(names.items())}

    # ------------------------------------------------------------------ catalog: writes

    async def catalog_register(self, node: dict, service: dict | None, checks: list[dict],
                               skip_node_update: bool = False) -> None:
        txn = self.begin()
        existing = self.nodes.get(node["Node"])
        if existing is None or not skip_node_update:
            self.upsert_node(txn, node)
        if service is not None:
            self.upsert_service(txn, node["Node"], service)
        for check in checks:
            self._require_check_service(node["Node"], check)
            self.upsert_check(txn, check)
        await self.commit(txn)

    def _require_check_service(self, node: str, check: dict) -> None:
        sid = check.get("ServiceID")
        if sid:
            svc = self.services.get((node, sid))
            if svc is None:
                raise StoreError(500, f'Unknown service ID "{sid}" for check ID "{check["CheckID"]}"')
            check["ServiceName"] = svc["Service"]
            check["ServiceTags"] = list(svc["Tags"])

    async def catalog_deregister(self, node: str, service_id: str | None = None,
                                 check_id: str | None = None) -> None:
        txn = self.begin()
        kept = None
        if service_id:
            self.delete_service(txn, node, service_id)
        elif check_id:
            self.delete_check(txn, node, check_id)
        else:
            kept = self._agent_node_copy() if node == self.node_name else None
            self.delete_node(txn, node)
        await self.commit(txn)
        if kept is not None:
            await self._restore_agent_node(*kept)

    def _agent_node_copy(self) -> tuple[dict, list[dict], list[dict]]:
        node = self.node_name
        return (dict(self.nodes[node]), [dict(s) for s in self.node_services.get(node, {}).values()],
                [dict(c) for c in self.node_checks.get(node, {}).values()])

    async def _restore_agent_node(self, node: dict, services: list[dict], checks: list[dict]) -> None:
        """Deregistering the agent's own node: as Consul's anti-entropy does within seconds, the agent puts
        its node, services and checks straight back (sessions and locks tied to them are gone, as in Consul)."""
        txn = self.begin()
        self.upsert_node(txn, node)
        for service in services:
            self.upsert_service(txn, node["Node"], service)
        for check in checks:
            self.upsert_check(txn, check)
        await self.commit(txn)

    async def register_service(self, service: dict, checks: list[dict], replace_checks: bool) -> None:
        """Agent registration on the local node: the service, its checks, optionally dropping others."""
        txn = self.begin()
        node = self.node_name
        self.upsert_service(txn, node, service)
        wanted = {c["CheckID"] for c in checks}
        if replace_checks:
            for cid, check in list(self.node_checks.get(node, {}).items()):
                if check["ServiceID"] == service["ID"] and cid not in wanted \
                        and not cid.startswith("_service_maintenance:"):
                    self.delete_check(txn, node, cid)
        for check in checks:
            self.upsert_check(txn, {**self._carry_status(check), "ServiceName": service["Service"],
                                    "ServiceTags": list(service["Tags"])})
        await self.commit(txn)

    async def deregister_service(self, service_id: str) -> bool:
        txn = self.begin()
        found = self.delete_service(txn, self.node_name, service_id)
        await self.commit(txn)
        return found

    async def register_check(self, check: dict) -> None:
        txn = self.begin()
        check = self._carry_status(check)
        self._require_check_service(check["Node"], check)
        self.upsert_check(txn, check)
        await self.commit(txn)

    def _carry_status(self, check: dict) -> dict:
        """Re-registering a check without an explicit Status keeps the status it has (as Consul does)."""
        keep = check.pop("_keep_status", False)
        old = self.checks.get((check["Node"], check["CheckID"]))
        if keep and old is not None:
            return {**check, "Status": old["Status"], "Output": old["Output"]}
        return check

    async def deregister_check(self, node: str, check_id: str) -> bool:
        txn = self.begin()
        found = self.delete_check(txn, node, check_id)
        await self.commit(txn)
        return found

    async def update_check(self, node: str, check_id: str, status: str, output: str) -> bool:
        """Set a check's status/output; a no-op (same status and output) writes nothing."""
        check = self.checks.get((node, check_id))
        if check is None:
            return False
        txn = self.begin()
        self.upsert_check(txn, {**check, "Status": status, "Output": output})
        await self.commit(txn)
        return True

    # ------------------------------------------------------------------ KV

    def kv_prefix_items(self, prefix: str) -> list[dict]:
        return [self.kv[k] for k in self._prefix_keys(self.kv, prefix)]

    def _prefix_keys(self, mapping: SortedDict, prefix: str) -> Iterable[str]:
        for key in mapping.irange(minimum=prefix):
            if not key.startswith(prefix):
                break
            yield key

    def kv_prefix_index(self, prefix: str) -> int:
        """Max ModifyIndex under prefix, tombstones of deleted keys included (0 if nothing ever was)."""
        best = 0
        for key in self._prefix_keys(self.kv, prefix):
            best = max(best, self.kv[key]["ModifyIndex"])
        for key in self._prefix_keys(self.kv_tombstones, prefix):
            best = max(best, self.kv_tombstones[key])
        return best

    def _kv_touch(self, txn: Txn, key: str) -> None:
        txn.touch("kv", f"kv:{key}", *(f"kvp:{key[:i]}" for i in range(len(key) + 1)))

    def _kv_set(self, txn: Txn, key: str, entry: dict) -> None:
        self.kv[key] = entry
        if key in self.kv_tombstones:
            del self.kv_tombstones[key]
            txn.batch.delete("kv_tombstones", key)
        txn.batch.put("kv", key, entry)
        self._kv_touch(txn, key)

    def _kv_remove(self, txn: Txn, key: str) -> None:
        del self.kv[key]
        self.kv_tombstones[key] = txn.index
        txn.batch.delete("kv", key)
        txn.batch.put("kv_tombstones", key, txn.index)
        self._kv_touch(txn, key)

    async def kv_put(self, key: str, value: str | None, flags: int = 0, cas: int | None = None,
                     acquire: str | None = None, release: str | None = None) -> bool:
        """One KV write with Consul's cas/acquire/release rules; value is base64 text or None (empty)."""
        txn = self.begin()
        old = self.kv.get(key)
        if cas is not None and not self._cas_ok(old, cas):
            return False
        entry = {"LockIndex": old["LockIndex"] if old else 0, "Key": key, "Flags": flags, "Value": value,
                 "CreateIndex": old["CreateIndex"] if old else txn.index, "ModifyIndex": txn.index}
        if old and old.get("Session"):
            entry["Session"] = old["Session"]
        if acquire is not None:
            if not self._acquire(old, entry, acquire):
                return False
        elif release is not None:
            if not old or old.get("Session") != release or release not in self.sessions:
                return False
            entry.pop("Session", None)
        self._kv_set(txn, key, entry)
        await self.commit(txn)
        return True

    @staticmethod
    def _cas_ok(old: dict | None, cas: int) -> bool:
        return old is None if cas == 0 else (old is not None and old["ModifyIndex"] == cas)

    def _acquire(self, old: dict | None, entry: dict, session: str) -> bool:
        if session not in self.sessions:
            raise StoreError(500, f'Invalid session "{session}"')
        holder = old.get("Session") if old else None
        if holder and holder != session:
            return False
        if holder != session:
            if self._lock_delays.get(entry["Key"], 0) > time.monotonic():
                return False
            entry["LockIndex"] = entry["LockIndex"] + 1
        entry["Session"] = session
        return True

    async def kv_delete(self, key: str, recurse: bool = False, cas: int | None = None) -> bool:
        txn = self.begin()
        if recurse:
            for k in list(self._prefix_keys(self.kv, key)):
                self._kv_remove(txn, k)
        else:
            old = self.kv.get(key)
            if cas is not None and (cas == 0 or not self._cas_ok(old, cas)):
                return False
            if old is not None:
                self._kv_remove(txn, key)
        await self.commit(txn)
        return True

    # ------------------------------------------------------------------ sessions

    async def session_create(self, request: dict) -> str:
        node = request.get("Node") or self.node_name
        if node not in self.nodes:
            raise StoreError(500, f"Missing node registration for '{node}'")
        node_checks = request.get("NodeChecks")
        if node_checks is None:
            node_checks = request.get("Checks") if request.get("Checks") is not None else ["serfHealth"]
        service_checks = request.get("ServiceChecks")
        for cid in list(node_checks) + [c.get("ID", "") for c in service_checks or []]:
            check = self.checks.get((node, cid))
            if check is None:
                raise StoreError(500, f"Missing check '{cid}' registration")
            if check["Status"] == "critical":
                raise StoreError(500, f"Check '{cid}' is in critical state")
        ttl = request.get("TTL") or ""
        if ttl:
            seconds = parse_duration(ttl)
            if seconds != 0 and not 10 <= seconds <= 86400:
                raise StoreError(500, f"Invalid Session TTL '{int(seconds * 1e9)}', must be between [10s=24h0m0s]")
            ttl = format_duration(seconds) if seconds else ""
        sid = str(uuid.uuid4())
        txn = self.begin()
        session = {"ID": sid, "Name": request.get("Name", ""), "Node": node,
                   "LockDelay": int(parse_duration(request.get("LockDelay", "15s")) * 1e9),
                   "Behavior": request.get("Behavior") or "release", "TTL": ttl,
                   "NodeChecks": list(node_checks), "ServiceChecks": service_checks,
                   "CreateIndex": txn.index, "ModifyIndex": txn.index}
        self.sessions[sid] = session
        txn.batch.put("sessions", sid, session)
        txn.touch("sessions", f"session:{sid}", f"session_node:{node}")
        await self.commit(txn)
        self._arm_session_timer(sid)
        return sid

    def _arm_session_timer(self, sid: str) -> None:
        """TTL sessions expire after 2×TTL without renewal (Consul's grace multiplier)."""
        session = self.sessions.get(sid)
        old = self._session_timers.pop(sid, None)
        if old:
            old.cancel()
        if not session or not session["TTL"]:
            return
        delay = 2 * parse_duration(session["TTL"])
        loop = asyncio.get_running_loop()
        self._session_timers[sid] = loop.call_later(
            delay, lambda: asyncio.ensure_future(self.session_destroy(sid)))

    def arm_all_session_timers(self) -> None:
        """After a restart every TTL session gets a full TTL again (as after a Consul leader change)."""
        for sid in list(self.sessions):
            self._arm_session_timer(sid)

    async def session_renew(self, sid: str) -> dict | None:
        session = self.sessions.get(sid)
        if session is None:
            return None
        self._arm_session_timer(sid)
        return session

    async def session_destroy(self, sid: str) -> bool:
        txn = self.begin()
        found = self._invalidate_session(txn, sid)
        await self.commit(txn)
        return found

    def _invalidate_session(self, txn: Txn, sid: str) -> bool:
        session = self.sessions.pop(sid, None)
        if session is None:
            return False
        timer = self._session_timers.pop(sid, None)
        if timer:
            timer.cancel()
        txn.batch.delete("sessions", sid)
        txn.touch("sessions", f"session:{sid}", f"session_node:{session['Node']}")
        delay_until = time.monotonic() + session["LockDelay"] / 1e9
        for key, entry in list(self.kv.items()):
            if entry.get("Session") != sid:
                continue
            if session["LockDelay"]:
                self._lock_delays[key] = delay_until
            if session["Behavior"] == "delete":
                self._kv_remove(txn, key)
            else:
                released = {k: v for k, v in entry.items() if k != "Session"}
                self._kv_set(txn, key, {**released, "ModifyIndex": txn.index})
        return True

    def _invalidate_sessions_for_check(self, txn: Txn, node: str, cid: str) -> None:
        for sid, session in list(self.sessions.items()):
            service_ids = [c.get("ID") for c in session.get("ServiceChecks") or []]
            if session["Node"] == node and (cid in session["NodeChecks"] or cid in service_ids):
                self._invalidate_session(txn, sid)

    # ------------------------------------------------------------------ generic durable records

    async def put_record(self, table: str, key: str, record: dict | None, topic: str) -> int:
        """Store (or delete, with None) one record of a simple keyed table such as the ACL tables."""
        mapping: dict = getattr(self, table)
        txn = self.begin()
        if record is None:
            if mapping.pop(key, None) is None:
                return self.index
            txn.batch.delete(table, key)
        else:
            mapping[key] = record
            txn.batch.put(table, key, record)
        txn.touch(topic)
        return await self.commit(txn)
