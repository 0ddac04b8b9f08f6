"""Alembic environment of the durable_adapter SQL store.

From a checkout: ``alembic -x url=sqlite+aiosqlite:///app.db upgrade head`` (or set
``DURABLE_ADAPTER_URL``); ``-x schema=name`` (or ``DURABLE_ADAPTER_SCHEMA``) puts the
tables in a PostgreSQL schema. From an application's own ini, a section with
``script_location = durable_adapter.stores.sql:migrations`` runs the same environment
(``docs/upgrading.md``); its ``sqlalchemy.url`` may use the synchronous driver forms
(``postgresql://``, ``sqlite:///``), which are run with the async drivers.

``--sql`` (offline) needs no database: the dialect comes from ``-x dialect=postgresql``
or from the URL's scheme. :func:`durable_adapter.migrate.migrate` runs the same
environment (as ``durable_adapter.stores.sql.migrations``, this folder's package), handing
over its connection in ``config.attributes["connection"]``; ``upgrade_sql`` hands over
the dialect in ``config.attributes["dialect"]``.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.schema import CreateSchema

from durable_adapter.stores.sql.migrate import MIGRATION_LOCK_KEY, driver_url, run_with_lock
from durable_adapter.stores.sql.revisions import adopt_legacy_ids
from durable_adapter.stores.sql.schema import VERSION_TABLE, metadata
from durable_adapter.stores.urls import normalize_store_url

config = context.config
x_args = context.get_x_argument(as_dictionary=True)
given_connection: Connection | None = config.attributes.get("connection")


def _has_logging_sections() -> bool:
    # an application's ini may configure logging elsewhere, or not at all
    parser = config.file_config
    return all(parser.has_section(name) for name in ("loggers", "handlers", "formatters"))


if (config.config_file_name is not None and given_connection is None
        and _has_logging_sections()):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str | None:
    return (
        x_args.get("url")
        or os.environ.get("DURABLE_ADAPTER_URL")
        or os.environ.get("DURABLE_ADAPTER_STORE_URL")
        or config.get_main_option("sqlalchemy.url")
        or None
    )


def _required_url() -> str:
    url = _url()
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set DURABLE_ADAPTER_URL")
    return normalize_store_url(url)  # postgres://, sqlite:/// as the store takes them


def _schema() -> str | None:
    if "schema" in config.attributes:
        return config.attributes["schema"]  # type: ignore[no-any-return]
    return x_args.get("schema") or os.environ.get("DURABLE_ADAPTER_SCHEMA") or None


def _offline_dialect() -> str:
    given = config.attributes.get("dialect") or x_args.get("dialect")
    if given:
        return str(given)
    url = _url()
    if not url:
        raise SystemExit("no dialect for --sql: pass -x dialect=postgresql (or sqlite), "
                         "or -x url=...")
    return driver_url(url).get_backend_name()


def do_run_migrations(connection: Connection) -> None:
    schema = _schema()
    # databases stamped by releases before the ids were namespaced: same schema, new ids
    adopt_legacy_ids(connection, schema)
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        compare_type=True,
    )
    # inside run_with_lock / migrate() the caller's transaction is used as is
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Write the upgrade as SQL. The revisions name ``version_table_schema`` as the
    store's schema in every statement, since no engine maps schemas here."""
    schema = _schema()
    dialect = _offline_dialect()
    context.configure(
        dialect_name=dialect,
        # named: no DBAPI escaping of "%" (the PL/pgSQL RAISE formats of revision 0004)
        dialect_opts={"paramstyle": "named"},
        target_metadata=metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
    )
    with context.begin_transaction():
        if dialect == "postgresql":
            # the same lock and schema as an online upgrade (sqlite3 locks the file itself)
            context.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            if schema is not None:
                context.execute(CreateSchema(schema, if_not_exists=True))
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
elif given_connection is not None:
    do_run_migrations(given_connection)
else:
    # the CLI path: same engine set-up and lock as durable_adapter.migrate.migrate()
    asyncio.run(run_with_lock(_required_url(), _schema(), do_run_migrations))
