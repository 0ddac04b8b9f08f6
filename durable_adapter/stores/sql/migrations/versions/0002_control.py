"""Control messages between nodes: the control table.

Revision ID: durable_adapter_0002
Revises: durable_adapter_0001
Create Date: 2026-11-27

Written out in full, as 0001: a migration is a frozen snapshot of the schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from durable_adapter.stores.sql.migrations.target import store_schema

revision: str = "durable_adapter_0002"
down_revision: str | Sequence[str] | None = "durable_adapter_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREFIX = "durable_adapter_"


def upgrade() -> None:
    op.create_table(
        f"{PREFIX}control",
        # an identity/serial id; AUTOINCREMENT on SQLite so pruned ids are never reused
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("after_seq", sa.BigInteger(), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sqlite_autoincrement=True,
        schema=store_schema(),
    )


def downgrade() -> None:
    op.drop_table(f"{PREFIX}control", schema=store_schema())
