"""Live sessions and node leases: the sessions' ``owner`` column and the nodes table.

Revision ID: durable_adapter_0005
Revises: durable_adapter_0004
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

from durable_adapter.stores.sql.migrations.target import store_schema

revision: str = "durable_adapter_0005"
down_revision: str | Sequence[str] | None = "durable_adapter_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREFIX = "durable_adapter_"


def upgrade() -> None:
    schema = store_schema()
    op.add_column(f"{PREFIX}sessions", sa.Column("owner", sa.Text(), nullable=True),
                  schema=schema)
    op.create_index(f"ix_{PREFIX}sessions_owner", f"{PREFIX}sessions", ["owner"],
                    schema=schema)
    op.create_table(
        f"{PREFIX}nodes",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("expires_at", sa.Double(), nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    op.drop_table(f"{PREFIX}nodes", schema=store_schema())
    op.drop_index(f"ix_{PREFIX}sessions_owner", table_name=f"{PREFIX}sessions",
                  schema=store_schema())
    with op.batch_alter_table(f"{PREFIX}sessions", schema=store_schema()) as batch:
        batch.drop_column("owner")
