"""What a revision needs to know about where it runs, online or writing SQL (``--sql``).

Revisions name the store's schema in every statement (``schema=store_schema()``): online
the engine's schema map would place unqualified tables, but offline there is no engine,
and a DBA's script must say where each table goes. Read from the migration context, never
from ``op.get_bind()``, which offline is a mock without execution options.
"""

from __future__ import annotations

from alembic import op


def store_schema() -> str | None:
    """The PostgreSQL schema of the store's tables: the one our environment keeps the
    version table in (None: the connection's default)."""
    schema: str | None = op.get_context().version_table_schema
    return schema


def dialect_name() -> str:
    """``postgresql`` or ``sqlite``, from the connection or, offline, the configuration."""
    return str(op.get_context().dialect.name)
