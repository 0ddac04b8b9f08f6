"""Room stays of a session and where its offset-less recovery starts: the ``membership``
and ``resume_seq`` columns of the sessions table.

Revision ID: durable_adapter_0003
Revises: durable_adapter_0002
Create Date: 2026-11-29

Nullable: sessions saved before it have none and recover as before (their rooms count
since they connected).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from durable_adapter.stores.sql.migrations.target import store_schema

revision: str = "durable_adapter_0003"
down_revision: str | Sequence[str] | None = "durable_adapter_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREFIX = "durable_adapter_"


def upgrade() -> None:
    op.add_column(f"{PREFIX}sessions", sa.Column("membership", sa.Text(), nullable=True),
                  schema=store_schema())
    op.add_column(f"{PREFIX}sessions", sa.Column("resume_seq", sa.BigInteger(), nullable=True),
                  schema=store_schema())


def downgrade() -> None:
    with op.batch_alter_table(f"{PREFIX}sessions", schema=store_schema()) as batch:
        batch.drop_column("resume_seq")
        batch.drop_column("membership")
