"""Fixtures of the store conformance suite: every store runs the same tests.

A store joins the suite by adding one entry to ``STORE_FACTORIES``: an async context
manager, given the test's tmp_path, yielding an unopened store and cleaning up after.
PostgreSQL follows the libpq environment (``PGHOST``, ``PGUSER``, ...), gets a fresh
migrated schema per test, and is skipped when no server answers (fails under CI=true).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from durable_adapter.stores.base import Store
from durable_adapter.stores.memory import MemoryStore
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.postgres import PostgresStore
from tests._mongo import mongo_store
from tests._postgres import POSTGRES_URL, postgres_schema
from tests._redis import redis_store

WAIT = 10.0  # seconds any single store operation or expected delivery may take


def sqlite_url(tmp_path: Path, name: str = "store.db") -> str:
    return f"sqlite+aiosqlite:///{tmp_path / name}"


@asynccontextmanager
async def memory_store(_: Path) -> AsyncIterator[Store]:
    yield MemoryStore()


@asynccontextmanager
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    yield SQLStore(sqlite_url(tmp_path), poll_interval=0.02)


@asynccontextmanager
async def postgres_store(_: Path) -> AsyncIterator[Store]:
    async with postgres_schema() as schema:
        yield PostgresStore(POSTGRES_URL, schema=schema)


STORE_FACTORIES: dict[str, Callable[[Path], AbstractAsyncContextManager[Store]]] = {
    "memory": memory_store,
    "sqlite": sqlite_store,
    "postgres": postgres_store,
    "redis": redis_store,
    "mongo": mongo_store,
}


def _stray_tasks() -> set[asyncio.Task[object]]:
    current = asyncio.current_task()
    return {task for task in asyncio.all_tasks() if task is not current and not task.done()}


@pytest.fixture(params=list(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    before = _stray_tasks()
    async with STORE_FACTORIES[request.param](tmp_path) as instance:
        await asyncio.wait_for(instance.open(), WAIT)
        try:
            yield instance
        finally:
            await asyncio.wait_for(instance.close(), WAIT)
    # close() stops the store's writer and follower: nothing of it keeps running
    assert _stray_tasks() - before == set()
