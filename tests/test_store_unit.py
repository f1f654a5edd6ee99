"""Store-level rules that need no process: group-commit ordering, read barriers, storage failure."""

from __future__ import annotations

import asyncio

import pytest

from registry.persistence import Batch, MemoryPersistence
from registry.store import Store, StoreError


class SlowPersistence(MemoryPersistence):
    """Durability that takes a while, or fails: the store must not show what is not yet on disk."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.release = asyncio.Event()

    async def commit(self, batch: Batch) -> None:
        await self.release.wait()
        if self.fail:
            raise OSError(28, "No space left on device")


def test_reads_wait_for_the_write_they_see_to_be_durable() -> None:
    async def scenario() -> None:
        persistence = SlowPersistence()
        store = Store(persistence, "n1")
        write = asyncio.ensure_future(store.kv_put("k", "dg=="))
        await asyncio.sleep(0)
        assert "k" in store.kv  # applied in memory ...
        reader = asyncio.ensure_future(store.wait_durable())
        await asyncio.sleep(0.01)
        assert not reader.done()  # ... but no reply may show it before it is on disk
        persistence.release.set()
        assert await write is True
        await asyncio.wait_for(reader, 1)
        assert store.durable_index == store.index

    asyncio.run(scenario())


def test_a_refused_durable_write_stops_the_store() -> None:
    async def scenario() -> None:
        persistence = SlowPersistence(fail=True)
        store = Store(persistence, "n1")
        fatal: list[Exception] = []
        store.on_fatal = fatal.append
        write = asyncio.ensure_future(store.kv_put("k", "dg=="))
        await asyncio.sleep(0)
        reader = asyncio.ensure_future(store.wait_durable())
        persistence.release.set()
        with pytest.raises(StoreError, match="storage failure"):
            await write
        with pytest.raises(StoreError, match="storage failure"):
            await reader
        assert fatal and "No space left" in str(fatal[0])
        with pytest.raises(StoreError):
            await store.kv_put("other", None)

    asyncio.run(scenario())


def test_instances_follow_renames_and_deletes() -> None:
    async def scenario() -> None:
        store = Store(MemoryPersistence(), "n1")
        node = {"ID": "", "Node": "n1", "Address": "127.0.0.1", "Datacenter": "dc1", "TaggedAddresses": {}, "Meta": {}}
        svc = {"ID": "s1", "Service": "web", "Tags": [], "Address": "", "Meta": {}, "Port": 1,
               "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False}
        await store.catalog_register(node, svc, [])
        assert [s["ID"] for _, s, _ in store.instances("web")] == ["s1"]
        await store.catalog_register(node, {**svc, "Service": "db"}, [], skip_node_update=True)
        assert store.instances("web") == [] and [s["Service"] for _, s, _ in store.instances("db")] == ["db"]
        await store.catalog_deregister("n1", service_id="s1")
        assert store.instances("db") == [] and "db" not in store.service_keys

    asyncio.run(scenario())
