"""The target index: ``durable_adapter_packet_targets``, one row per (namespace, target)
of each packet, so a restore reads only what its socket may be owed.

Revision ID: durable_adapter_0007
Revises: durable_adapter_0006
Create Date: 2026-12-07

A packet's targets (``durable_adapter.stores.targets``): ``*`` for the whole namespace
(no rooms), else ``#<room>`` for each room it was sent to. Packets stored before this
revision get their rows here (a backfill from their ``rooms`` column: at most the
retention window's worth). On PostgreSQL ``durable_adapter_emit_packet`` (revision 0004)
is replaced by one that writes the rows too, in the caller's transaction. Written out in
full, as the other revisions: a frozen snapshot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from durable_adapter.stores.sql.migrations.target import dialect_name, store_schema

revision: str = "durable_adapter_0007"
down_revision: str | Sequence[str] | None = "durable_adapter_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREFIX = "durable_adapter_"
CHANNEL_PREFIX = "durable_adapter_v1_"  # the store's NOTIFY channel (stores/sql/postgres.py)


def _channel(schema: str | None) -> str:
    name = CHANNEL_PREFIX + (schema or "public")
    if len(name.encode()) > 63:
        name = CHANNEL_PREFIX + hashlib.sha256((schema or "").encode()).hexdigest()[:32]
    return name


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


BACKFILL = {
    "postgresql": """
INSERT INTO {targets} (namespace, target, seq)
SELECT namespace, '*', seq FROM {packets} WHERE rooms = '[]'
UNION
SELECT p.namespace, '#' || e.room, p.seq
FROM {packets} AS p, jsonb_array_elements_text(CAST(p.rooms AS jsonb)) AS e(room)
""",
    "sqlite": """
INSERT INTO {targets} (namespace, target, seq)
SELECT namespace, '*', seq FROM {packets} WHERE rooms = '[]'
UNION
SELECT p.namespace, '#' || e.value, p.seq FROM {packets} AS p, json_each(p.rooms) AS e
""",
}

# durable_adapter_emit_packet as in revision 0004, with {targets} after the packet's INSERT
EMIT_PACKET = """
CREATE OR REPLACE FUNCTION {qualify}durable_adapter_emit_packet(
    namespace text, payload bytea, rooms text[] DEFAULT '{{}}', except_rooms text[] DEFAULT '{{}}'
) RETURNS bigint
LANGUAGE plpgsql VOLATILE {search_path}
AS $fn$
#variable_conflict use_variable
DECLARE
    new_seq bigint;
BEGIN
    IF namespace IS NULL OR left(namespace, 1) <> '/' THEN
        RAISE EXCEPTION 'durable_adapter_emit: namespace must start with "/", got %',
            coalesce(quote_literal(namespace), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF payload IS NULL THEN
        RAISE EXCEPTION 'durable_adapter_emit: payload is NULL' USING ERRCODE = '22004';
    END IF;
    rooms := coalesce(rooms, '{{}}');
    except_rooms := coalesce(except_rooms, '{{}}');
    IF array_ndims(rooms) > 1 OR array_ndims(except_rooms) > 1
            OR array_position(rooms, NULL) IS NOT NULL
            OR array_position(except_rooms, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'durable_adapter_emit: rooms and except_rooms must be flat arrays of '
            'non-NULL room names' USING ERRCODE = '22023';
    END IF;
    -- the counter row lock, held until COMMIT: seqs dense and in commit order
    UPDATE {prefix}counter SET top = top + 1 WHERE id = 1 RETURNING top INTO new_seq;
    IF new_seq IS NULL THEN
        RAISE EXCEPTION 'durable_adapter_emit: the store has no history yet: open it once '
            '(start a server or an Emitter) first' USING ERRCODE = '55000';
    END IF;
    INSERT INTO {prefix}packets (seq, namespace, payload, rooms, except_rooms, created_at)
    VALUES (new_seq, namespace, payload, to_jsonb(rooms)::text, to_jsonb(except_rooms)::text,
            extract(epoch FROM clock_timestamp()));{targets}
    PERFORM pg_notify({channel}, '');  -- sent at COMMIT, never on ROLLBACK
    RETURN new_seq;
END
$fn$
"""

# the packet's target index rows: the whole namespace, or each room once
TARGET_ROWS = """
    INSERT INTO {prefix}packet_targets (namespace, target, seq)
    SELECT namespace, '*', new_seq WHERE cardinality(rooms) = 0
    UNION
    SELECT namespace, '#' || room, new_seq FROM unnest(rooms) AS room;"""


def _emit_packet(with_targets: bool) -> str:
    schema = store_schema()
    values = {
        "qualify": f'"{schema}".' if schema else "",
        "search_path": f'SET search_path = "{schema}"' if schema
        else "SET search_path FROM CURRENT",
        "prefix": PREFIX,
        "channel": _quote(_channel(schema)),
    }
    targets = TARGET_ROWS.format(**values) if with_targets else ""
    return EMIT_PACKET.format(**values, targets=targets)


def _table(name: str) -> str:
    schema = store_schema()
    return f'"{schema}"."{name}"' if schema else f'"{name}"'


def upgrade() -> None:
    schema = store_schema()
    op.create_table(
        f"{PREFIX}packet_targets",
        sa.Column("namespace", sa.Text(), primary_key=True),
        sa.Column("target", sa.Text(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sqlite_with_rowid=False,
        schema=schema,
    )
    op.create_index(f"ix_{PREFIX}packet_targets_seq", f"{PREFIX}packet_targets", ["seq"],
                    schema=schema)
    dialect = dialect_name()
    if dialect in BACKFILL:
        op.execute(BACKFILL[dialect].format(targets=_table(f"{PREFIX}packet_targets"),
                                            packets=_table(f"{PREFIX}packets")))
    if dialect == "postgresql":
        op.execute(_emit_packet(with_targets=True))


def downgrade() -> None:
    schema = store_schema()
    if dialect_name() == "postgresql":
        op.execute(_emit_packet(with_targets=False))
    op.drop_index(f"ix_{PREFIX}packet_targets_seq", table_name=f"{PREFIX}packet_targets",
                  schema=schema)
    op.drop_table(f"{PREFIX}packet_targets", schema=schema)
