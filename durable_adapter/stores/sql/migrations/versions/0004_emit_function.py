"""Transactional emit on PostgreSQL: the ``durable_adapter_emit`` SQL functions.

Revision ID: durable_adapter_0004
Revises: durable_adapter_0003
Create Date: 2026-11-29

``durable_adapter_emit_packet(namespace, payload, rooms, except_rooms)`` does in SQL what
the store's append does: it takes the next seq from the counter row, inserts the packet row
and rings the NOTIFY doorbell, all in the caller's transaction, so the packet exists (and
the bell rings) only if that transaction commits, and the counter row lock puts its seq in
commit order. ``durable_adapter_emit(namespace, event, args jsonb, rooms, except_rooms)``
builds the stored payload from JSON (the format of ``durable_adapter._codec``: no binary
parts, then the JSON text) for callers that have only SQL.

The functions name the store's tables unqualified and fix their ``search_path`` to the
store's schema (or, without one, to the migrating session's), so they work wherever they
are called from. SQLite has no stored functions: nothing to do there (``emit_in`` writes
the rows itself). Written out in full, as the other revisions: a frozen snapshot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from alembic import op

from durable_adapter.stores.sql.migrations.target import dialect_name, store_schema

revision: str = "durable_adapter_0004"
down_revision: str | Sequence[str] | None = "durable_adapter_0003"
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


EMIT_PACKET = """
CREATE FUNCTION {qualify}durable_adapter_emit_packet(
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
            extract(epoch FROM clock_timestamp()));
    PERFORM pg_notify({channel}, '');  -- sent at COMMIT, never on ROLLBACK
    RETURN new_seq;
END
$fn$
"""

EMIT_JSON = """
CREATE FUNCTION {qualify}durable_adapter_emit(
    namespace text, event text, args jsonb DEFAULT '[]', rooms text[] DEFAULT '{{}}',
    except_rooms text[] DEFAULT '{{}}'
) RETURNS bigint
LANGUAGE plpgsql VOLATILE {search_path}
AS $fn$
#variable_conflict use_variable
DECLARE
    head bytea;
BEGIN
    IF event IS NULL THEN
        RAISE EXCEPTION 'durable_adapter_emit: event is NULL' USING ERRCODE = '22004';
    END IF;
    args := coalesce(args, '[]');
    IF jsonb_typeof(args) <> 'array' THEN
        RAISE EXCEPTION 'durable_adapter_emit: args must be a JSON array (the event''s '
            'arguments), got a JSON %', jsonb_typeof(args) USING ERRCODE = '22023';
    END IF;
    -- the payload format of durable_adapter._codec: 0 binary parts, the JSON's length,
    -- the JSON of [event, *args]
    head := convert_to((jsonb_build_array(event) || args)::text, 'UTF8');
    RETURN {qualify}durable_adapter_emit_packet(
        namespace, '\\x00000000'::bytea || int4send(octet_length(head)) || head,
        rooms, except_rooms);
END
$fn$
"""


def upgrade() -> None:
    if dialect_name() != "postgresql":
        return  # SQLite: no stored functions
    schema = store_schema()
    values = {
        "qualify": f'"{schema}".' if schema else "",
        # without a schema: the tables the migrating session (the store's role) sees
        "search_path": f'SET search_path = "{schema}"' if schema
        else "SET search_path FROM CURRENT",
        "prefix": PREFIX,
        "channel": _quote(_channel(schema)),
    }
    op.execute(EMIT_PACKET.format(**values))
    op.execute(EMIT_JSON.format(**values))


def downgrade() -> None:
    if dialect_name() != "postgresql":
        return
    schema = store_schema()
    qualify = f'"{schema}".' if schema else ""
    op.execute(f"DROP FUNCTION IF EXISTS {qualify}durable_adapter_emit"
               "(text, text, jsonb, text[], text[])")
    op.execute(f"DROP FUNCTION IF EXISTS {qualify}durable_adapter_emit_packet"
               "(text, bytea, text[], text[])")
