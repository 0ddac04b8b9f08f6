"""Alembic environment of the durable_adapter SQL store.

From a checkout: ``alembic -x url=sqlite+aiosqlite:///app.db upgrade head`` (or set
``DURABLE_ADAPTER_URL``); ``-x schema=name`` (or ``DURABLE_ADAPTER_SCHEMA``) puts the
tables in a PostgreSQL schema. :func:`durable_adapter.migrate.migrate` runs the same
environment (as ``durable_adapter.stores.sql.migrations``, this folder's package), handing
over its connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from durable_adapter.stores.sql.migrate import run_with_lock
from durable_adapter.stores.sql.schema import VERSION_TABLE, metadata
from durable_adapter.stores.urls import normalize_store_url

config = context.config
x_args = context.get_x_argument(as_dictionary=True)
given_connection: Connection | None = config.attributes.get("connection")

if config.config_file_name is not None and given_connection is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = (
        x_args.get("url")
        or os.environ.get("DURABLE_ADAPTER_URL")
        or os.environ.get("DURABLE_ADAPTER_STORE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set DURABLE_ADAPTER_URL")
    return normalize_store_url(url)  # postgres://, sqlite:/// as the store takes them


def _schema() -> str | None:
    if "schema" in config.attributes:
        return config.attributes["schema"]  # type: ignore[no-any-return]
    return x_args.get("schema") or os.environ.get("DURABLE_ADAPTER_SCHEMA") or None


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        version_table_schema=_schema(),
        compare_type=True,
    )
    # inside run_with_lock / migrate() the caller's transaction is used as is
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
        version_table_schema=_schema(),
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
elif given_connection is not None:
    do_run_migrations(given_connection)
else:
    # the CLI path: same engine set-up and lock as durable_adapter.migrate.migrate()
    asyncio.run(run_with_lock(_url(), _schema(), do_run_migrations))
