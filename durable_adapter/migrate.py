"""Create or upgrade a store's tables (``durable-adapter migrate --store URL`` in Python).

Usage::

    await migrate("postgresql+asyncpg://app@db/app")

A SQL URL runs the SQL store's Alembic migrations (:mod:`.stores.sql.migrate`, whose
environment ships inside the package as ``durable_adapter.stores.sql.migrations``); a
``mongodb://`` URL creates the MongoDB store's collections and indexes. Running it twice
is a no-op, and two processes may run it at once.

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
    upgrade,
    upgrade_engine,
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
    "upgrade_engine",
]


async def migrate(url: str, *, schema: str | None = None) -> None:
    """Create or upgrade the store's tables at ``url`` (in PostgreSQL ``schema`` if given).

    :param url: a SQLAlchemy async URL, e.g. ``sqlite+aiosqlite:///app.db``.
    :param schema: a PostgreSQL schema for the tables (created if missing).
    :raises StoreError: the database cannot be reached or refused the change.

    A ``mongodb://`` or ``mongodb+srv://`` URL creates the MongoDB store's collections and
    indexes instead (:func:`durable_adapter.stores.mongo.ensure_schema`).
    """
    if store_scheme(url) in ("mongodb", "mongodb+srv"):
        from .stores.mongo import ensure_schema

        await ensure_schema(url)
        return
    await upgrade(url, schema=schema)
