"""Bring a SQL store's tables to the current version with its Alembic migrations.

The Alembic environment is the package :mod:`.migrations` beside this module
(``durable_adapter.stores.sql.migrations``), found through :mod:`importlib.resources` by
that name, never by the top-level name ``migrations`` (an application's own package may
have it), so no ``alembic.ini`` is needed. ``alembic upgrade head`` from a checkout runs
the same environment (the checkout's ``alembic.ini`` points at it).

Usage::

    await upgrade("postgresql+asyncpg://app@db/app")

:func:`durable_adapter.migrate.migrate` is the documented entry point: it sends MongoDB
URLs to the MongoDB store and every other URL here.

Running it twice is a no-op, and two processes may run it at once: the upgrade runs in
one transaction that first takes a lock (``pg_advisory_xact_lock`` on PostgreSQL, the
write lock via ``BEGIN IMMEDIATE`` on SQLite), so the second waits and then finds the
tables at head.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateSchema

from ..errors import driver_errors
from .dialect import WRITE_OPTION, create_engine, parse_url
from .schema import VERSION_TABLE

#: Key of the PostgreSQL advisory lock serialising upgrades ("durable" in ASCII).
MIGRATION_LOCK_KEY = 0x64757261626C65


#: The package holding the Alembic environment, inside our own namespace.
MIGRATIONS_PACKAGE = f"{__package__}.migrations"


def migrations_path() -> Path:
    """The directory of the bundled Alembic environment (needs a non-zipped install)."""
    return Path(str(importlib.resources.files(MIGRATIONS_PACKAGE)))


def alembic_config(*, schema: str | None = None) -> Config:
    """An Alembic configuration for our migrations, without any ini file."""
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    config.attributes["schema"] = schema
    return config


def head_revisions() -> tuple[str, ...]:
    """The revisions the current code expects the database to be at."""
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def _lock_and_prepare(connection: Connection, schema: str | None) -> None:
    # dialect-specific part of an upgrade; SQLite is already locked by BEGIN IMMEDIATE
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        if schema is not None:
            connection.execute(CreateSchema(schema, if_not_exists=True))


@asynccontextmanager
async def locked_connection(
    engine: AsyncEngine, schema: str | None = None
) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction that holds the migration lock until it ends."""
    async with engine.connect() as connection:
        await connection.execution_options(**{WRITE_OPTION: True})
        async with connection.begin():
            await connection.run_sync(_lock_and_prepare, schema)
            yield connection


def _upgrade(connection: Connection, schema: str | None) -> None:
    config = alembic_config(schema=schema)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _current_heads(connection: Connection, schema: str | None) -> tuple[str, ...]:
    context = MigrationContext.configure(
        connection,
        opts={"version_table": VERSION_TABLE, "version_table_schema": schema},
    )
    return tuple(context.get_current_heads())


async def is_current(engine: AsyncEngine, schema: str | None = None) -> bool:
    """True when the database's tables are at the head revision."""
    async with engine.connect() as connection:
        heads = await connection.run_sync(_current_heads, schema)
    return set(heads) == set(head_revisions())


async def upgrade_engine(engine: AsyncEngine, schema: str | None = None) -> None:
    """Run the migrations to head on ``engine`` (which stays open)."""
    async with locked_connection(engine, schema) as connection:
        await connection.run_sync(_upgrade, schema)


async def run_with_lock(url: str, schema: str | None, run: Callable[[Connection], Any]) -> None:
    """Call ``run(connection)`` under the migration lock; used by ``migrations/env.py``."""
    engine = create_engine(parse_url(url), schema=schema)
    try:
        async with locked_connection(engine, schema) as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


async def upgrade(url: str, *, schema: str | None = None) -> None:
    """Create or upgrade the SQL store's tables at ``url`` (in PostgreSQL ``schema`` if
    given); :func:`durable_adapter.migrate.migrate` documents it."""
    sa_url = parse_url(url)
    engine = create_engine(sa_url, schema=schema)
    where = sa_url.render_as_string(hide_password=True)
    try:
        with driver_errors(f"migrating the store at {where} failed", SQLAlchemyError, OSError):
            await upgrade_engine(engine, schema)
    finally:
        await engine.dispose()
