"""PostgreSQL for the tests: the libpq environment, a fresh schema per test, dropped after.

Under ``CI=true`` an unreachable server fails the test instead of skipping it: CI must
not pass by testing nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, NoReturn, TypeVar

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from durable_adapter.migrate import migrate

POSTGRES_URL = "postgresql+asyncpg://"  # host, user, database from the libpq env vars
WAIT = 10.0  # seconds for one administrative query
T = TypeVar("T")


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}")
    pytest.skip(f"no PostgreSQL reachable through the libpq env vars: {reason}")


async def execute(sql: str) -> None:
    engine = create_async_engine(POSTGRES_URL)
    try:
        async with engine.begin() as connection:
            await asyncio.wait_for(connection.exec_driver_sql(sql), WAIT)
    finally:
        await engine.dispose()


async def create_schema(*, migrated: bool = True) -> str:
    """A new schema ``t_<hex>``, with the store's tables unless ``migrated`` is False."""
    schema = f"t_{secrets.token_hex(6)}"
    try:
        await execute(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:
        unavailable(str(exc))
    if migrated:
        await asyncio.wait_for(migrate(POSTGRES_URL, schema=schema), 60)
    return schema


async def drop_schema(schema: str) -> None:
    await execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@asynccontextmanager
async def postgres_schema(*, migrated: bool = True) -> AsyncIterator[str]:
    schema = await create_schema(migrated=migrated)
    try:
        yield schema
    finally:
        await drop_schema(schema)


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion from synchronous code, even inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@contextmanager
def postgres_schema_sync(*, migrated: bool = True) -> Iterator[str]:
    schema = run_sync(create_schema(migrated=migrated))
    try:
        yield schema
    finally:
        run_sync(drop_schema(schema))


def pg_ctl(action: str, timeout: float = 60) -> None:
    """``pg_ctlcluster <version> main <action>``: the machine's PostgreSQL."""
    versions = sorted(os.listdir("/etc/postgresql"))
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action],
                   check=True, timeout=timeout, capture_output=True)


def wait_ready(timeout: float = 60) -> None:
    """Until ``pg_isready`` says the server accepts connections, or fail."""
    deadline = time.monotonic() + timeout
    while subprocess.run(["pg_isready", "-q"], check=False, timeout=timeout).returncode != 0:
        assert time.monotonic() < deadline, f"PostgreSQL not ready after {timeout} s"
        time.sleep(0.1)
