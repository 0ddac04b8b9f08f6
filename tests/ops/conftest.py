"""Fixtures of the operations tests: a migrated SQL database on SQLite and PostgreSQL.

PostgreSQL follows the libpq environment (``PGHOST``, ``PGUSER``, ...). In-process tests
get a fresh schema (``migrate(url, schema=...)``, ``SQLStore(url, schema=...)``);
command-line tests, whose ``--store`` URL has no schema, get a fresh database. Without a
server these tests are skipped, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from durable_adapter.migrate import migrate
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.postgres import PostgresStore
from tests._postgres import POSTGRES_URL, require_server

WAIT = 10.0  # seconds any single expected event may take


@dataclass(frozen=True)
class Target:
    """A migrated database: ``url`` plus, on PostgreSQL, the test's own ``schema``."""

    kind: str
    url: str
    schema: str | None = None

    def store(self) -> SQLStore:
        kind = SQLStore if self.url.startswith("sqlite") else PostgresStore
        return kind(self.url, schema=self.schema, auto_migrate=False, poll_interval=0.02)


async def _admin(statement: str | None = None) -> None:
    """Run ``statement`` (or just connect) in autocommit on the default database."""
    engine = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await asyncio.wait_for(connection.exec_driver_sql(statement or "SELECT 1"), WAIT)
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """A migrated store database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'ops.db'}"
        await asyncio.wait_for(migrate(url), WAIT)
        yield Target("sqlite", url)
        return
    await require_server()
    schema = f"t_{secrets.token_hex(6)}"
    try:
        await asyncio.wait_for(migrate(POSTGRES_URL, schema=schema), WAIT)
        yield Target("postgres", POSTGRES_URL, schema)
    finally:
        await _admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database for command-line tests: a SQLite path or a fresh PostgreSQL db."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
        return
    await require_server()
    name = f"t_{secrets.token_hex(6)}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_URL}/{name}"
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
