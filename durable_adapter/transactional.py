"""Emits that are part of the application's own database transaction (``emit_in``).

The packet row is written through the connection the application already holds, so it
exists if and only if that transaction commits; the counter row, updated in the same
transaction, gives it a seq in commit order among every other emit. Every server node's
follower then delivers it like any packet, and a client that was away replays it.

PostgreSQL: through the ``durable_adapter_emit_packet`` SQL function the migrations
install (also behind the JSON-only ``durable_adapter_emit`` for triggers and plain SQL).
SQLite: the same two statements run here, on the caller's connection to the store's file.
The payload is always encoded by the store's own code (:func:`.stores.sql.schema.packet_values`),
so binary arguments and payloads of any size work as with ``sio.emit``.

Keep such transactions short, or emit last: from the emit to the COMMIT the transaction
holds the counter row (SQLite: the write lock), and every other emit waits for it.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any, overload

from sqlalchemy import Connection, TextClause, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from ._codec import Codec
from ._packets import as_args, as_rooms, check_sendable, packet_class_for
from .exceptions import ConfigurationError, StoreError
from .stores.base import NewPacket
from .stores.rules import check_new_packet
from .stores.sql.schema import SINGLETON_ID, counter, packet_targets, packet_values, packets
from .stores.targets import targets_of

_NO_TRANSACTIONS = {
    "redis": "Redis has no rollback: a MULTI block runs every command even when one fails, "
             "so an emit cannot depend on the rest of a transaction",
    "pymongo": "the packets live in a capped collection, which cannot take part in "
               "MongoDB multi-document transactions",
}


@overload
def emit_in(conn: AsyncConnection | AsyncSession, event: str, data: Any = None,
            to: Any = None, room: Any = None, skip_sid: Any = None, namespace: str = "/",
            schema: str | None = None, json: Any = None) -> Coroutine[Any, Any, int]: ...


@overload
def emit_in(conn: Connection | Session, event: str, data: Any = None, to: Any = None,
            room: Any = None, skip_sid: Any = None, namespace: str = "/",
            schema: str | None = None, json: Any = None) -> int: ...


@overload
def emit_in(conn: Any, event: str, data: Any = None, to: Any = None, room: Any = None,
            skip_sid: Any = None, namespace: str = "/", schema: str | None = None,
            json: Any = None) -> Any: ...


def emit_in(conn: Any, event: str, data: Any = None, to: Any = None, room: Any = None,
            skip_sid: Any = None, namespace: str = "/", schema: str | None = None,
            json: Any = None) -> Any:
    """Emit as part of the transaction open on ``conn``; returns the packet's seq.

    ``conn``: a SQLAlchemy ``AsyncConnection`` or ``AsyncSession`` (then await the call),
    a ``Connection`` or ``Session`` (the call returns the seq), or an asyncpg connection
    inside ``async with conn.transaction():`` (await it). It must reach the store's
    database: PostgreSQL (tables in ``schema`` if the store has one) or the store's
    SQLite file. Nothing is delivered until the caller commits; a rollback removes it.
    ``json``: the JSON module the servers were given (python-socketio's ``json=``).

    Usage::

        async with engine.begin() as conn:
            await conn.execute(orders.insert().values(id=7))
            await durable_adapter.emit_in(conn, "order", {"id": 7}, to="user:42")
    """
    _refuse_non_sql(conn)
    if not isinstance(event, str):
        raise TypeError(f"event must be a str, got {type(event).__name__}")
    if schema is not None and not (isinstance(schema, str) and schema.isidentifier()):
        raise ConfigurationError(f"schema must be a plain identifier, got {schema!r}")
    packet = NewPacket(namespace=namespace, data=[event, *as_args(data)],
                       rooms=as_rooms(to or room), except_rooms=as_rooms(skip_sid))
    check_new_packet(packet)
    if not namespace.startswith("/"):  # as the SQL function: a swapped argument, likely
        raise StoreError(f"namespace must start with '/', got {namespace!r}")
    # as sio.emit: what cannot be sent is refused
    check_sendable(namespace, packet.data, packet_class_for(json))
    values = packet_values(packet, Codec(json))  # the store's encoder
    if type(conn).__module__.startswith("asyncpg"):
        return _emit_asyncpg(conn, packet, values, schema)
    if isinstance(conn, AsyncConnection | AsyncSession):
        return _emit_async(conn, packet, values, schema)
    if isinstance(conn, Connection | Session):
        return _emit_sync(conn, packet, values, schema)
    raise TypeError(
        "emit_in takes a SQLAlchemy Connection, Session, AsyncConnection or AsyncSession, "
        f"or an asyncpg connection; got {type(conn).__name__}")


def _refuse_non_sql(conn: Any) -> None:
    root = type(conn).__module__.split(".", 1)[0]
    if root in _NO_TRANSACTIONS:
        raise ConfigurationError(
            f"transactional emit is not possible with {root}: {_NO_TRANSACTIONS[root]}; "
            "use durable_adapter.AsyncEmitter (or Emitter) after your commit instead")


def _emit_packet_call(schema: str | None, *, placeholders: tuple[str, ...]) -> str:
    qualify = f'"{schema}".' if schema else ""
    ns, payload, rooms, except_rooms = placeholders
    return (f"SELECT {qualify}durable_adapter_emit_packet({ns}, {payload}, "
            f"CAST({rooms} AS text[]), CAST({except_rooms} AS text[]))")


def _postgres_statement(schema: str | None) -> TextClause:
    return text(_emit_packet_call(
        schema, placeholders=(":namespace", ":payload", ":rooms", ":except_rooms")))


def _postgres_params(packet: NewPacket, values: dict[str, Any]) -> dict[str, Any]:
    return {"namespace": packet.namespace, "payload": values["payload"],
            "rooms": list(packet.rooms), "except_rooms": list(packet.except_rooms)}


def _sqlite_counter_update() -> Any:
    return (update(counter).where(counter.c.id == SINGLETON_ID)
            .values(top=counter.c.top + 1).returning(counter.c.top))


def _new_seq(top: Any) -> int:
    if top is None:
        raise StoreError("the store has no history yet: open it once (start a server or "
                         "an emitter) first")
    return int(top)


def _sqlite_row(seq: int, values: dict[str, Any]) -> dict[str, Any]:
    return {**values, "seq": seq, "created_at": time.time()}


def _sqlite_target_rows(seq: int, packet: NewPacket) -> list[dict[str, Any]]:
    """The packet's target index rows (PostgreSQL's emit function writes its own)."""
    return [{"namespace": packet.namespace, "target": target, "seq": seq}
            for target in targets_of(packet.rooms)]


async def _emit_async(conn: AsyncConnection | AsyncSession, packet: NewPacket,
                      values: dict[str, Any], schema: str | None) -> int:
    if _check(conn, schema) == "postgresql":
        result = await conn.execute(_postgres_statement(schema),
                                    _postgres_params(packet, values))
        return int(result.scalar_one())
    seq = _new_seq((await conn.execute(_sqlite_counter_update())).scalar_one_or_none())
    await conn.execute(packets.insert(), [_sqlite_row(seq, values)])
    await conn.execute(packet_targets.insert(), _sqlite_target_rows(seq, packet))
    return seq


def _emit_sync(conn: Connection | Session, packet: NewPacket, values: dict[str, Any],
               schema: str | None) -> int:
    if _check(conn, schema) == "postgresql":
        result = conn.execute(_postgres_statement(schema), _postgres_params(packet, values))
        return int(result.scalar_one())
    seq = _new_seq(conn.execute(_sqlite_counter_update()).scalar_one_or_none())
    conn.execute(packets.insert(), [_sqlite_row(seq, values)])
    conn.execute(packet_targets.insert(), _sqlite_target_rows(seq, packet))
    return seq


async def _emit_asyncpg(conn: Any, packet: NewPacket, values: dict[str, Any],
                        schema: str | None) -> int:
    if not conn.is_in_transaction():
        raise StoreError("emit_in on an asyncpg connection runs inside your transaction: "
                         "call it within `async with conn.transaction():`")
    query = _emit_packet_call(schema, placeholders=("$1", "$2", "$3", "$4"))
    seq = await conn.fetchval(query, packet.namespace, values["payload"],
                              list(packet.rooms), list(packet.except_rooms))
    return int(seq)


def _check(conn: AsyncConnection | AsyncSession | Connection | Session,
           schema: str | None) -> str:
    bind = conn.get_bind() if isinstance(conn, AsyncSession | Session) else conn
    name: str = bind.dialect.name
    if name not in ("postgresql", "sqlite"):
        raise ConfigurationError(
            f"transactional emit supports PostgreSQL and SQLite, not {name}")
    if name == "sqlite" and schema is not None:
        raise ConfigurationError("schema= is a PostgreSQL option; SQLite has no schemas")
    return name

