"""The SQL store's append: a writer batch in one round trip, straight through the driver.

The batch is split into columns once (:func:`split`). PostgreSQL gets them as arrays in
one statement (:func:`postgres_statement`): the counter update, the INSERTs and the
NOTIFY, committed as that statement's own transaction. SQLite gets one call on the
aiosqlite thread (:func:`sqlite_write`): ``BEGIN IMMEDIATE``, the counter update, an
``executemany`` per table fed by C iterators, ``COMMIT``. Either way SQLAlchemy compiles
nothing per batch and no Python runs per row between the columns and the driver.

Seqs are known only under the counter row lock (SQLite: the write lock), so rows carry
numbers relative to the batch: packet k of the batch gets ``top - count + k``, where
``top`` is what the counter update returns, and a control message the seq of the packet
queued before it (``after_seq``), exactly as if each were written in queue order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import count as counting
from itertools import repeat
from operator import itemgetter
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ...exceptions import StoreError
from .control import CONTROL_ROW
from .schema import SINGLETON_ID, control, counter, packet_targets, packets

#: the key of a queued packet row holding its targets (stores/targets.py)
TARGETS = "targets"

#: seconds the writer keeps its connection unused before giving it back to the pool
HOLD_IDLE = 30.0

_NAMESPACE, _PAYLOAD, _ROOMS, _EXCEPT = (itemgetter(key) for key in
                                         ("namespace", "payload", "rooms", "except_rooms"))


def _target_rows(rows: list[dict[str, Any]]) -> tuple[list[int], list[str], list[str]]:
    """For each target of each packet row: the packet's number in the batch (1-based),
    its namespace and the target."""
    numbers: list[int] = []
    namespaces: list[str] = []
    targets: list[str] = []
    for number, row in enumerate(rows, 1):
        for target in row[TARGETS]:
            numbers.append(number)
            namespaces.append(row["namespace"])
            targets.append(target)
    return numbers, namespaces, targets


@dataclass(slots=True)
class Batch:
    """A writer batch as columns, in queue order.

    ``after``: for each control message, the number of packets queued before it in the
    batch; ``numbers``: for each row, the same count including itself (a packet's seq,
    a control message's ``after_seq``, relative to the top before the batch), or None
    when the batch holds packets only (then they are 1..count).
    """

    count: int
    namespaces: list[str]
    payloads: list[bytes]
    rooms: list[str]
    except_rooms: list[str]
    after: list[int] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    targets: list[str | None] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)
    numbers: list[int] | None = None
    #: one entry per target index row: its packet's number in the batch, namespace, target
    target_numbers: list[int] = field(default_factory=list)
    target_namespaces: list[str] = field(default_factory=list)
    target_keys: list[str] = field(default_factory=list)

    def seqs(self, top: int) -> list[int]:
        """One number per row for the writer's callers, given the top after the batch."""
        base = top - self.count
        if self.numbers is None:
            return list(range(base + 1, top + 1))
        return [base + number for number in self.numbers]


def split(rows: list[dict[str, Any]]) -> Batch:
    """``rows`` (packet values and control rows, as queued) as a :class:`Batch`."""
    if not any(CONTROL_ROW in row for row in rows):  # the common case: packets only
        indexed = _target_rows(rows)
        return Batch(len(rows), list(map(_NAMESPACE, rows)), list(map(_PAYLOAD, rows)),
                     list(map(_ROOMS, rows)), list(map(_EXCEPT, rows)),
                     target_numbers=indexed[0], target_namespaces=indexed[1],
                     target_keys=indexed[2])
    packet_rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    batch = Batch(0, [], [], [], [], numbers=numbers)
    for row in rows:
        message = row.get(CONTROL_ROW)
        if message is None:
            packet_rows.append(row)
        else:
            batch.after.append(len(packet_rows))
            batch.origins.append(message["origin"])
            batch.targets.append(message["target"])
            batch.methods.append(message["method"])
            batch.bodies.append(message["body"])
        numbers.append(len(packet_rows))
    batch.count = len(packet_rows)
    batch.namespaces = list(map(_NAMESPACE, packet_rows))
    batch.payloads = list(map(_PAYLOAD, packet_rows))
    batch.rooms = list(map(_ROOMS, packet_rows))
    batch.except_rooms = list(map(_EXCEPT, packet_rows))
    batch.target_numbers, batch.target_namespaces, batch.target_keys = \
        _target_rows(packet_rows)
    return batch


def _qualified(table: Table, dialect: Dialect, schema: str | None) -> str:
    # as SQLAlchemy's schema_translate_map would render it for the rest of the store
    quote = dialect.identifier_preparer
    name = quote.quote(table.name)
    return name if schema is None else f"{quote.quote_schema(schema)}.{name}"


# -- SQLite ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SQLiteStatements:
    top: str
    packets: str
    control: str
    targets: str


def sqlite_statements(dialect: Dialect) -> SQLiteStatements:
    def name(table: Table) -> str:
        return _qualified(table, dialect, None)

    return SQLiteStatements(
        top=f"UPDATE {name(counter)} SET top = top + ? WHERE id = {SINGLETON_ID} RETURNING top",
        packets=f"INSERT INTO {name(packets)} (seq, namespace, payload, rooms, except_rooms,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
        control=f"INSERT INTO {name(control)} (after_seq, origin, target, method, body,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
        targets=f"INSERT INTO {name(packet_targets)} (namespace, target, seq)"
                " VALUES (?, ?, ?)",
    )


def sqlite_write(db: sqlite3.Connection, sql: SQLiteStatements, batch: Batch,
                 now: float) -> int:
    """The batch in one transaction; runs on the aiosqlite thread. Returns the new top.

    ``BEGIN IMMEDIATE`` takes the database write lock first (as the store's other
    writes do, :data:`.dialect.WRITE_OPTION`), so seqs are assigned under it even with
    several processes on one file; ``busy_timeout`` bounds the wait for it.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute(sql.top, (batch.count,)).fetchone()
        if row is None:
            raise StoreError("the counter row is missing (tables emptied by hand?)")
        top: int = row[0]
        base = top - batch.count
        if batch.count:
            db.executemany(sql.packets, zip(
                counting(base + 1), batch.namespaces, batch.payloads, batch.rooms,
                batch.except_rooms, repeat(now), strict=False))
            db.executemany(sql.targets, zip(
                batch.target_namespaces, batch.target_keys,
                map(base.__add__, batch.target_numbers), strict=False))
        if batch.after:
            db.executemany(sql.control, zip(
                map(base.__add__, batch.after), batch.origins, batch.targets,
                batch.methods, batch.bodies, repeat(now), strict=False))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a failed ROLLBACK leaves it in one: the caller drops it
            db.execute("ROLLBACK")
        raise
    return top


# -- PostgreSQL -----------------------------------------------------------------------


def postgres_statement(dialect: Dialect, schema: str | None) -> str:
    """One statement for a whole batch; its parameters are :func:`postgres_args`'. The
    target index rows (:mod:`..targets`) go in with their packets.

    Every sub-statement reads ``c``, the counter row as updated, so nothing is inserted
    before the row lock is held, and the seqs come from the locked row's newest
    version, not from the statement's snapshot. ``pg_notify`` is delivered at COMMIT,
    and not at all if the statement fails.
    """

    def name(table: Table) -> str:
        return _qualified(table, dialect, schema)

    return f"""
WITH c AS (
    UPDATE {name(counter)} SET top = top + $1 WHERE id = {SINGLETON_ID} RETURNING top
), p AS (
    INSERT INTO {name(packets)} (seq, namespace, payload, rooms, except_rooms, created_at)
    SELECT c.top - $1 + r.k, r.namespace, r.payload, r.rooms, r.except_rooms, $6
    FROM c, unnest($2::text[], $3::bytea[], $4::text[], $5::text[])
        WITH ORDINALITY AS r(namespace, payload, rooms, except_rooms, k)
), t AS (
    INSERT INTO {name(packet_targets)} (namespace, target, seq)
    SELECT r.namespace, r.target, c.top - $1 + r.k
    FROM c, unnest($14::bigint[], $15::text[], $16::text[]) AS r(k, namespace, target)
), m AS (
    INSERT INTO {name(control)} (after_seq, origin, target, method, body, created_at)
    SELECT c.top - $1 + r.after, r.origin, r.target, r.method, r.body, $6
    FROM c, unnest($7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[])
        WITH ORDINALITY AS r(after, origin, target, method, body, k)
    ORDER BY r.k  -- ids in queue order
)
SELECT c.top, pg_notify($12, $13) FROM c"""


def postgres_args(batch: Batch, now: float, channel: str, bell: str) -> tuple[Any, ...]:
    """``bell``: the NOTIFY payload (the store's token, which its own listener ignores)."""
    return (batch.count, batch.namespaces, batch.payloads, batch.rooms, batch.except_rooms,
            now, batch.after, batch.origins, batch.targets, batch.methods, batch.bodies,
            channel, bell, batch.target_numbers, batch.target_namespaces, batch.target_keys)


# -- the writer's connection ----------------------------------------------------------


class ConnectionLost(StoreError):
    """A batch failed for a reason that is not in its rows (the connection, a lock):
    writing the rows one by one would not help."""



class WriterConnection:
    """The writer's connection, checked out of the store's engine and kept while batches
    keep coming.

    A checkout per batch costs the pool's bookkeeping and, with ``pool_pre_ping`` (the
    PostgreSQL store's engine), a round trip of its own. Taking it from the engine
    rather than opening one keeps whatever the engine was set up with (a given
    :class:`AsyncEngine`'s creator, SSL, statement cache settings for PgBouncer).
    Unused for :data:`HOLD_IDLE` seconds, or found closed, it goes back and a fresh
    checkout (pinged) replaces it.
    """

    def __init__(self, engine: Callable[[], AsyncEngine], clock: Callable[[], float],
                 closed: Callable[[Any], bool]) -> None:
        self._engine = engine
        self._clock = clock
        self._closed = closed
        self._connection: AsyncConnection | None = None
        self._driver: Any = None
        self._used_at = 0.0

    async def driver(self) -> Any:
        """The driver's own connection (aiosqlite / asyncpg), not in a transaction."""
        now = self._clock()
        if self._connection is not None and (
                now - self._used_at > HOLD_IDLE or self._closed(self._driver)):
            await self.release()
        if self._connection is None:
            connection = await self._engine().connect()
            try:
                raw = await connection.get_raw_connection()
            except BaseException:
                await connection.close()
                raise
            self._connection, self._driver = connection, raw.driver_connection
        self._used_at = now
        return self._driver

    async def release(self, *, invalidate: bool = False) -> None:
        """Give the connection back; ``invalidate``: close it, it may be unusable."""
        connection, self._connection, self._driver = self._connection, None, None
        if connection is None:
            return
        try:
            if invalidate:
                await connection.invalidate()
        finally:
            await connection.close()

    async def run(self, write: Callable[[Any], Awaitable[int]],
                  lost: Callable[[BaseException, Any], bool], message: str) -> int:
        """``write(driver)``. After a failure for which ``lost(error, driver)`` (the
        connection, not the rows) the connection is closed, not reused, and the error
        becomes :class:`ConnectionLost` (``message``, the error as cause)."""
        driver = await self.driver()
        try:
            return await write(driver)
        except BaseException as exc:
            if not lost(exc, driver):
                raise
            await self.release(invalidate=True)
            if not isinstance(exc, Exception):  # a cancel stays a cancel
                raise
            raise ConnectionLost(f"{message}: {exc}") from exc
