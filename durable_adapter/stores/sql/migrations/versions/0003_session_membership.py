"""Room stays of a session and where its offset-less recovery starts: the ``membership``
and ``resume_seq`` columns of the sessions table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Nullable: sessions saved before it have none and recover as before (their rooms count
since they connected).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREFIX = "durable_adapter_"


def _schema() -> str | None:
    # ALTER TABLE names its table directly: the engine's schema map does not reach it
    translate = op.get_bind().get_execution_options().get("schema_translate_map") or {}
    schema: str | None = translate.get(None)
    return schema


def upgrade() -> None:
    op.add_column(f"{PREFIX}sessions", sa.Column("membership", sa.Text(), nullable=True),
                  schema=_schema())
    op.add_column(f"{PREFIX}sessions", sa.Column("resume_seq", sa.BigInteger(), nullable=True),
                  schema=_schema())


def downgrade() -> None:
    with op.batch_alter_table(f"{PREFIX}sessions", schema=_schema()) as batch:
        batch.drop_column("resume_seq")
        batch.drop_column("membership")
