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
tables at head. A database a later release migrated is refused in one line
(:func:`.revisions.newer_message`), never touched. :func:`upgrade_sql` writes the same
upgrade as a SQL script, without connecting.
"""

from __future__ import annotations

import importlib.resources
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateSchema

from ...exceptions import ConfigurationError
from ..errors import driver_errors
from ..urls import normalize_store_url
from .dialect import WRITE_OPTION, create_engine, is_sqlite, parse_url
from .revisions import SchemaState, newer_message, read_state, shipped

#: Key of the PostgreSQL advisory lock serialising upgrades ("durable" in ASCII).
MIGRATION_LOCK_KEY = 0x64757261626C65


#: The package holding the Alembic environment, inside our own namespace.
MIGRATIONS_PACKAGE = f"{__package__}.migrations"


def migrations_path() -> Path:
    """The directory of the bundled Alembic environment (needs a non-zipped install)."""
    return Path(str(importlib.resources.files(MIGRATIONS_PACKAGE)))


def driver_url(url: str | URL) -> URL:
    """``url`` as the store opens it: ``sqlite:///x.db``, ``postgres://`` and the other
    forms users keep in ``DATABASE_URL`` name the async drivers
    (:func:`~..urls.normalize_store_url`, shared with the servers and the CLI)."""
    text = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    return parse_url(normalize_store_url(text))


def alembic_config(*, schema: str | None = None, output_buffer: io.StringIO | None = None
                   ) -> Config:
    """An Alembic configuration for our migrations, without any ini file."""
    config = Config(output_buffer=output_buffer)
    config.set_main_option("script_location", str(migrations_path()))
    config.attributes["schema"] = schema
    return config


def head_revisions() -> tuple[str, ...]:
    """The revisions the current code expects the database to be at."""
    return shipped(str(migrations_path())).heads


def _state(connection: Connection, schema: str | None) -> SchemaState:
    return read_state(connection, schema, shipped(str(migrations_path())))


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
    # read under the lock: a later release may have migrated since the caller looked
    state = _state(connection, schema)
    if state.newer:
        url = connection.engine.url.render_as_string(hide_password=True)
        raise ConfigurationError(newer_message(url, state))
    config = alembic_config(schema=schema)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")  # env.py re-stamps legacy ids first


async def schema_state(engine: AsyncEngine, schema: str | None = None) -> SchemaState:
    """Where the database's tables are against this release's revisions (read-only)."""
    async with engine.connect() as connection:
        return await connection.run_sync(_state, schema)


async def is_current(engine: AsyncEngine, schema: str | None = None) -> bool:
    """True when the database's tables are at the head revision."""
    return (await schema_state(engine, schema)).current


async def upgrade_engine(engine: AsyncEngine, schema: str | None = None) -> None:
    """Run the migrations to head on ``engine`` (which stays open)."""
    async with locked_connection(engine, schema) as connection:
        await connection.run_sync(_upgrade, schema)


async def run_with_lock(url: str, schema: str | None, run: Callable[[Connection], Any]) -> None:
    """Call ``run(connection)`` under the migration lock; used by ``migrations/env.py``."""
    engine = create_engine(driver_url(url), schema=schema)
    try:
        async with locked_connection(engine, schema) as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


async def upgrade(url: str, *, schema: str | None = None) -> None:
    """Create or upgrade the SQL store's tables at ``url`` (in PostgreSQL ``schema`` if
    given); :func:`durable_adapter.migrate.migrate` documents it."""
    sa_url = driver_url(url)
    engine = create_engine(sa_url, schema=schema)
    where = sa_url.render_as_string(hide_password=True)
    try:
        with driver_errors(f"migrating the store at {where} failed", SQLAlchemyError, OSError):
            await upgrade_engine(engine, schema)
    finally:
        await engine.dispose()


def upgrade_sql(url: str, *, schema: str | None = None) -> str:
    """The SQL script that creates or upgrades the tables from nothing to head, for the
    dialect of ``url`` (PostgreSQL or SQLite), without connecting to it: what a DBA
    applies by hand. On PostgreSQL it takes the migration lock and, with ``schema``,
    creates that schema and names it in every statement."""
    sa_url = driver_url(url)
    if schema is not None and is_sqlite(sa_url):
        raise ConfigurationError("schema= is a PostgreSQL option; SQLite has no schemas")
    if sa_url.get_backend_name() not in ("postgresql", "sqlite"):
        raise ConfigurationError(
            f"the SQL store supports PostgreSQL and SQLite, not {sa_url.get_backend_name()}")
    buffer = io.StringIO()
    config = alembic_config(schema=schema, output_buffer=buffer)
    config.attributes["dialect"] = sa_url.get_backend_name()
    command.upgrade(config, "head", sql=True)
    return buffer.getvalue()
