"""The recovery window each node serves: the nodes table's ``max_disconnection_duration``.

Revision ID: 0006
Revises: 0005
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

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREFIX = "durable_adapter_"


def _schema() -> str | None:
    # ALTER TABLE names its table directly: the engine's schema map does not reach it
    translate = op.get_bind().get_execution_options().get("schema_translate_map") or {}
    schema: str | None = translate.get(None)
    return schema


def upgrade() -> None:
    op.add_column(f"{PREFIX}nodes",
                  sa.Column("max_disconnection_duration", sa.Double(), nullable=True),
                  schema=_schema())


def downgrade() -> None:
    with op.batch_alter_table(f"{PREFIX}nodes", schema=_schema()) as batch:
        batch.drop_column("max_disconnection_duration")
