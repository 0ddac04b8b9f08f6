"""Create or upgrade a store's tables (``durable-adapter migrate --store URL`` in Python).

Usage::

    await migrate("postgresql+asyncpg://app@db/app")

A SQL URL runs the SQL store's Alembic migrations (:mod:`.stores.sql.migrate`, whose
environment ships inside the package as ``durable_adapter.stores.sql.migrations``); a
``mongodb://`` URL creates the MongoDB store's collections and indexes. Running it twice
is a no-op, and two processes may run it at once. SQL URLs may use the synchronous driver
forms of ``DATABASE_URL`` (``postgresql://``, ``postgres://``, ``sqlite:///``): the
migrations run with the async drivers. :func:`upgrade_sql` prints the SQL instead.

The SQL helpers are re-exported here under their old names.
"""

from __future__ import annotations

from .stores.sql.migrate import (
    MIGRATION_LOCK_KEY,
    MIGRATIONS_PACKAGE,
    alembic_config,
    head_revisions,
    is_current,
    locked_connection,
    migrations_path,
    run_with_lock,
    schema_state,
    upgrade,
    upgrade_engine,
    upgrade_sql,
)
from .stores.urls import store_scheme

__all__ = [
    "MIGRATIONS_PACKAGE",
    "MIGRATION_LOCK_KEY",
    "alembic_config",
    "head_revisions",
    "is_current",
    "locked_connection",
    "migrate",
    "migrations_path",
    "run_with_lock",
    "schema_state",
    "upgrade_engine",
    "upgrade_sql",
]


async def migrate(url: str, *, schema: str | None = None) -> None:
    """Create or upgrade the store's tables at ``url`` (in PostgreSQL ``schema`` if given).

    :param url: a SQLAlchemy URL, e.g. ``sqlite+aiosqlite:///app.db`` or
                ``postgresql://app@db/app`` (run with asyncpg).
    :param schema: a PostgreSQL schema for the tables (created if missing).
    :raises StoreError: the database cannot be reached or refused the change.
    :raises ConfigurationError: a later release migrated the database (nothing is
                                changed), or the URL names no usable driver.

    A ``mongodb://`` or ``mongodb+srv://`` URL creates the MongoDB store's collections and
    indexes instead (:func:`durable_adapter.stores.mongo.ensure_schema`).
    """
    if store_scheme(url) in ("mongodb", "mongodb+srv"):
        from .stores.mongo import ensure_schema

        await ensure_schema(url)
        return
    await upgrade(url, schema=schema)
