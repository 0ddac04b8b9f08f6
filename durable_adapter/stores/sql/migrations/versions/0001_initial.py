"""Initial tables: meta (epoch), counter, packets, sessions.

Revision ID: durable_adapter_0001
Revises:
Create Date: 2026-11-25

Written out in full rather than imported from the store's schema module: a migration is a frozen
snapshot, and the migration tests check the two still agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from durable_adapter.stores.sql.migrations.target import store_schema

revision: str = "durable_adapter_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("durable_adapter",)
depends_on: str | Sequence[str] | None = None

PREFIX = "durable_adapter_"


def upgrade() -> None:
    schema = store_schema()
    op.create_table(
        f"{PREFIX}meta",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.String(32), nullable=False),
        schema=schema,
    )
    op.create_table(
        f"{PREFIX}counter",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("top", sa.BigInteger(), nullable=False),
        sa.Column("purged_through", sa.BigInteger(), nullable=False),
        schema=schema,
    )
    op.create_table(
        f"{PREFIX}packets",
        # INTEGER on SQLite makes seq the rowid: rows stored in seq order
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("rooms", sa.Text(), nullable=False),
        sa.Column("except_rooms", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        schema=schema,
    )
    op.create_table(
        f"{PREFIX}sessions",
        sa.Column("namespace", sa.Text(), primary_key=True),
        sa.Column("pid_hash", sa.String(64), primary_key=True),
        sa.Column("sid", sa.Text(), nullable=False),
        sa.Column("rooms", sa.Text(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("epoch", sa.String(32), nullable=False),
        sa.Column("start_seq", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("last_sent_seq", sa.BigInteger(), nullable=True),
        sa.Column("disconnected_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        schema=schema,
    )
    op.create_index(f"ix_{PREFIX}sessions_expires_at", f"{PREFIX}sessions", ["expires_at"],
                    schema=schema)
    op.create_index(f"ix_{PREFIX}sessions_namespace_sid", f"{PREFIX}sessions",
                    ["namespace", "sid"], schema=schema)


def downgrade() -> None:
    schema = store_schema()
    op.drop_index(f"ix_{PREFIX}sessions_namespace_sid", table_name=f"{PREFIX}sessions",
                  schema=schema)
    op.drop_index(f"ix_{PREFIX}sessions_expires_at", table_name=f"{PREFIX}sessions",
                  schema=schema)
    op.drop_table(f"{PREFIX}sessions", schema=schema)
    op.drop_table(f"{PREFIX}packets", schema=schema)
    op.drop_table(f"{PREFIX}counter", schema=schema)
    op.drop_table(f"{PREFIX}meta", schema=schema)
