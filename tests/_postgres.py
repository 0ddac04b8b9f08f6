"""PostgreSQL for the tests: the libpq environment, a fresh schema per test, dropped after.

When no server answers and Docker is there (the docker extra), one is started in Docker
for the run and the libpq variables point at it. Otherwise the test skips, or under CI
fails: CI must not pass by testing nothing.
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

import asyncpg
from sqlalchemy.ext.asyncio import create_async_engine

from durable_adapter.migrate import migrate
from tests import _docker
from tests._env import server_missing

POSTGRES_URL = "postgresql+asyncpg://"  # host, user, database from the libpq env vars
WAIT = 10.0  # seconds for one administrative query
IMAGE = "postgres:16-alpine"
T = TypeVar("T")
_container_tried = False


def unavailable(reason: str) -> NoReturn:
    server_missing("PostgreSQL", f"none reachable through the libpq env vars: {reason}")


def _accepts(host: str, port: int) -> bool:
    async def connect() -> None:
        connection = await asyncpg.connect(host=host, port=port, user="postgres",
                                           database="postgres", timeout=2)
        await connection.close()

    try:
        asyncio.run(connect())
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    return True


def start_container() -> bool:
    """PostgreSQL in Docker for the rest of the run, once; True if it started. The libpq
    variables are set to it, for asyncpg here and for the tests' child processes."""
    global _container_tried
    if _container_tried:
        return False
    _container_tried = True
    started = _docker.start(IMAGE, 5432, ready=_accepts, configure=lambda container:
                            container.with_env("POSTGRES_HOST_AUTH_METHOD", "trust"))
    if started is None:
        return False
    os.environ.update(PGHOST=started[0], PGPORT=str(started[1]), PGUSER="postgres",
                      PGDATABASE="postgres")
    return True


async def require_server() -> None:
    """Return once PostgreSQL answers (started in Docker if need be); else skip or fail."""
    try:
        await execute("SELECT 1")
    except Exception as exc:  # no server
        if not await asyncio.to_thread(start_container):
            unavailable(str(exc))


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
    except Exception:  # no server: find or start one, else skip or fail
        await require_server()
        await execute(f'CREATE SCHEMA "{schema}"')
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
