"""Live sessions and node leases: the sessions' ``owner`` column and the nodes table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

A socket's session is stored from its connect on, owned by the node holding the socket
(``owner``, indexed for the purge of a dead node's sessions); ``durable_adapter_nodes``
holds each node's lease. Rows written before have no owner: disconnected sessions, as
they were. Written out in full, as the other revisions: a frozen snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREFIX = "durable_adapter_"


def _schema() -> str | None:
    # ALTER TABLE names its table directly: the engine's schema map does not reach it
    translate = op.get_bind().get_execution_options().get("schema_translate_map") or {}
    schema: str | None = translate.get(None)
    return schema


def upgrade() -> None:
    schema = _schema()
    op.add_column(f"{PREFIX}sessions", sa.Column("owner", sa.Text(), nullable=True),
                  schema=schema)
    # tables and indexes, as in 0001: the engine's schema map places them
    op.create_index(f"ix_{PREFIX}sessions_owner", f"{PREFIX}sessions", ["owner"])
    op.create_table(
        f"{PREFIX}nodes",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("expires_at", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table(f"{PREFIX}nodes")
    op.drop_index(f"ix_{PREFIX}sessions_owner", table_name=f"{PREFIX}sessions")
    with op.batch_alter_table(f"{PREFIX}sessions", schema=_schema()) as batch:
        batch.drop_column("owner")
