"""The recovery window each node serves: the nodes table's ``max_disconnection_duration``.

Revision ID: durable_adapter_0006
Revises: durable_adapter_0005
Create Date: 2026-12-07

A node records the ``max_disconnection_duration`` it runs with next to its lease; the
cleanup keeps packets for the largest one among live nodes instead of a flag kept equal
by hand. NULL for nodes of releases before this one (the cleanup then uses its own
setting). Written out in full, as the other revisions: a frozen snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from durable_adapter.stores.sql.migrations.target import store_schema

revision: str = "durable_adapter_0006"
down_revision: str | Sequence[str] | None = "durable_adapter_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREFIX = "durable_adapter_"


def upgrade() -> None:
    op.add_column(f"{PREFIX}nodes",
                  sa.Column("max_disconnection_duration", sa.Double(), nullable=True),
                  schema=store_schema())


def downgrade() -> None:
    with op.batch_alter_table(f"{PREFIX}nodes", schema=store_schema()) as batch:
        batch.drop_column("max_disconnection_duration")
