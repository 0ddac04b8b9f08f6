"""The one-active-cleanup lock on Redis: one holder at a time, taken over when it lapses."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from durable_adapter._cleanup_lock import lock_of
from durable_adapter.exceptions import StoreError
from durable_adapter.stores.redis.cleanup_lock import RedisLock
from durable_adapter.stores.redis.store import RedisStore
from tests._redis import redis_store

from .conftest import WAIT


async def test_one_holder_at_a_time_and_a_release_lets_the_next_in(tmp_path: Path) -> None:
    async with redis_store(tmp_path) as store:
        assert isinstance(store, RedisStore)
        await store.open()
        try:
            first, second = lock_of(store), lock_of(store)
            assert await first.try_acquire()
            assert not await second.try_acquire()
            await first.check()  # held: renewed
            await first.release()
            assert await second.try_acquire()
            assert not await first.try_acquire()
            await second.release()
        finally:
            await store.close()


async def test_a_holder_that_stops_renewing_loses_the_lock(tmp_path: Path) -> None:
    async with redis_store(tmp_path) as store:
        assert isinstance(store, RedisStore)
        await store.open()
        try:
            def lock() -> RedisLock:
                return RedisLock(lambda: store.redis, store.keys.cleanup_lock, ttl=0.2)

            stale, standby = lock(), lock()
            assert await stale.try_acquire()
            deadline = time.monotonic() + WAIT
            while not await standby.try_acquire():  # taken once the TTL ran out
                assert time.monotonic() < deadline, "the lock never lapsed"
                await asyncio.sleep(0.05)
            with pytest.raises(StoreError):
                await stale.check()
            assert not stale.held
            await standby.release()
        finally:
            await store.close()
