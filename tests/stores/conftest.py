"""Fixtures of the store conformance suite: every store runs the same tests.

A store joins the suite by adding one entry to ``STORE_FACTORIES``: an async context
manager, given the test's tmp_path, yielding an unopened store and cleaning up after.
PostgreSQL follows the libpq environment (``PGHOST``, ``PGUSER``, ...), gets a fresh
schema per test, and is skipped when no server answers.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from durable_adapter.stores.base import Store
from durable_adapter.stores.memory import MemoryStore
from durable_adapter.stores.sql import SQLStore

WAIT = 10.0  # seconds any single store operation or expected delivery may take
POSTGRES_URL = "postgresql+asyncpg://"  # host, user, database from the libpq env vars


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
    schema = f"t_{secrets.token_hex(6)}"
    engine = create_async_engine(POSTGRES_URL)
    try:
        try:
            async with engine.connect() as connection:
                await asyncio.wait_for(connection.exec_driver_sql("SELECT 1"), WAIT)
        except Exception as exc:  # no server here: the suite still runs the others
            pytest.skip(f"no PostgreSQL reachable through the libpq env vars: {exc}")
        yield SQLStore(POSTGRES_URL, schema=schema, poll_interval=0.02, auto_migrate=True)
        async with engine.begin() as connection:
            await connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await engine.dispose()


STORE_FACTORIES: dict[str, Callable[[Path], AbstractAsyncContextManager[Store]]] = {
    "memory": memory_store,
    "sqlite": sqlite_store,
    "postgres": postgres_store,
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
