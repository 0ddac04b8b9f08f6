"""The SQL store's live sessions and node leases: conditional upserts, the take-over
transaction, and the purge of a dead node's sessions.

A take (of one session or of a batch) is one write transaction: the session rows are
read ``FOR UPDATE`` (PostgreSQL: of concurrent takes under READ COMMITTED, the later ones
wait for the row lock and then read the winner's owner; SQLite: the whole transaction
holds the database write lock from its ``BEGIN IMMEDIATE``), their owners' leases are
read, and :func:`.rules.decide_takes` rules.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..._codec import Codec
from ..base import OwnedBy, Session, TakeRequest, TakeResult
from ..rules import TAKE, decide_takes
from . import dialect
from .schema import nodes, session_from_row, session_values, sessions

logger = logging.getLogger(__name__)

_KEY_COLUMNS = ("namespace", "pid_hash")
#: keys per SELECT or UPDATE of a take: two bound parameters each, well under SQLite's
#: oldest limit of 999 parameters per statement
KEYS_PER_STATEMENT = 400


async def upsert_sessions(connection: AsyncConnection, sessions_: Sequence[Session],
                          node: str | None, codec: Codec) -> None:
    """Write every session with one executemany; with ``node``, rows another node owns
    are left alone (``ON CONFLICT DO UPDATE ... WHERE``)."""
    # one row per key: PostgreSQL refuses a statement that updates one row twice; in key
    # order, as takes lock them, so a save and a take of overlapping rows cannot deadlock
    by_key = {(s.namespace, s.pid_hash): session_values(s, codec) for s in sessions_}
    rows = [by_key[key] for key in sorted(by_key)]
    if not rows:
        return
    statement = dialect.insert_for(connection, sessions)
    changed = {column.name: statement.excluded[column.name] for column in sessions.c
               if column.name not in _KEY_COLUMNS}
    # an existing row is rewritten only while the writer owns it
    where = None if node is None else sessions.c.owner == node
    await connection.execute(
        statement.on_conflict_do_update(
            index_elements=[sessions.c.namespace, sessions.c.pid_hash], set_=changed,
            where=where),
        rows)


async def take_sessions(connection: AsyncConnection, requests: Sequence[TakeRequest], *,
                        node: str, now: float, window: float, codec: Codec
                        ) -> list[TakeResult]:
    """The take-over of many rows, inside the caller's write transaction: the rows
    locked in key order (two nodes taking overlapping batches wait for each other
    instead of deadlocking), one query for their owners' leases, one UPDATE per chunk."""
    keys = sorted({request.key for request in requests})
    found: dict[tuple[str, str], Any] = {}
    for chunk in _chunks(keys):
        query = select(sessions).where(_key_in(chunk)).with_for_update()
        if connection.dialect.name == "postgresql":
            # byte order, as Python's sort of ``keys`` (the database's collation may differ)
            query = query.order_by(sessions.c.namespace.collate("C"),
                                   sessions.c.pid_hash.collate("C"))
        for row in (await connection.execute(query)).all():
            found[(row.namespace, row.pid_hash)] = row
    decoded: dict[tuple[str, str], Session] = {}
    for key, row in list(found.items()):
        try:
            decoded[key] = session_from_row(row, codec)
        except Exception:  # one bad row must not fail the batch: it is not taken
            logger.exception("the stored session %s... cannot be decoded", key[1][:8])
            del found[key]
    owners = {row.owner for row in found.values() if row.owner not in (None, node)}
    leases: dict[str, float] = {}
    if owners:
        leases = {lease.id: lease.expires_at for lease in (await connection.execute(
            select(nodes.c.id, nodes.c.expires_at).where(nodes.c.id.in_(owners)))).all()}
    verdicts = decide_takes(
        requests, {key: (row.owner, row.expires_at) for key, row in found.items()}, leases,
        node=node, now=now, window=window)
    taken = sorted({r.key for r, verdict in zip(requests, verdicts, strict=True)
                    if verdict == TAKE})
    for chunk in _chunks(taken):
        await connection.execute(update(sessions).where(_key_in(chunk)).values(owner=node))
    results: list[TakeResult] = []
    for request, verdict in zip(requests, verdicts, strict=True):
        if verdict is None or isinstance(verdict, OwnedBy):
            results.append(verdict)
        elif verdict == TAKE:
            results.append(dataclasses.replace(decoded[request.key], owner=node))
        else:
            results.append(decoded[request.key])
    return results


async def read_owners(connection: AsyncConnection, keys: Sequence[tuple[str, str]]
                      ) -> dict[tuple[str, str], str | None]:
    """The owner of each stored row of ``keys`` (absent: no row), a SELECT per chunk."""
    found: dict[tuple[str, str], str | None] = {}
    for chunk in _chunks(list(dict.fromkeys(keys))):
        query = select(sessions.c.namespace, sessions.c.pid_hash, sessions.c.owner).where(
            _key_in(chunk))
        for row in (await connection.execute(query)).all():
            found[(row.namespace, row.pid_hash)] = row.owner
    return found


def _key_in(keys: Sequence[tuple[str, str]]) -> ColumnElement[bool]:
    return tuple_(sessions.c.namespace, sessions.c.pid_hash).in_(keys)


def _chunks(keys: list[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    """Keys in runs of :data:`KEYS_PER_STATEMENT`, in their order."""
    for start in range(0, len(keys), KEYS_PER_STATEMENT):
        yield keys[start:start + KEYS_PER_STATEMENT]


async def renew_lease(connection: AsyncConnection, node: str, expires_at: float) -> None:
    statement = dialect.insert_for(connection, nodes).values(id=node, expires_at=expires_at)
    await connection.execute(statement.on_conflict_do_update(
        index_elements=[nodes.c.id], set_={"expires_at": statement.excluded.expires_at}))


async def record_window(connection: AsyncConnection, node: str, seconds: float) -> None:
    """Note the recovery window ``node`` serves on its lease row (taken already)."""
    await connection.execute(update(nodes).where(nodes.c.id == node)
                             .values(max_disconnection_duration=seconds))


async def largest_window(connection: AsyncConnection, now: float) -> float | None:
    """The largest recovery window among the nodes alive at ``now``; None: none known."""
    query = select(func.max(nodes.c.max_disconnection_duration)).where(nodes.c.expires_at > now)
    value = (await connection.execute(query)).scalar()
    return None if value is None else float(value)


async def drop_lease(connection: AsyncConnection, node: str) -> None:
    await connection.execute(delete(nodes).where(nodes.c.id == node))


def _owner_dead(cutoff: float) -> ColumnElement[bool]:
    """Owned by a node whose lease expired at or before ``cutoff`` (no lease: at 0)."""
    lease = select(nodes.c.expires_at).where(nodes.c.id == sessions.c.owner).scalar_subquery()
    return and_(sessions.c.owner.is_not(None), func.coalesce(lease, 0.0) <= cutoff)


async def purge_dead_owned(connection: AsyncConnection, cutoff: float, batch_size: int) -> int:
    """Delete up to ``batch_size`` sessions of nodes dead since before ``cutoff``."""
    key = tuple_(sessions.c.namespace, sessions.c.pid_hash)
    batch = select(sessions.c.namespace, sessions.c.pid_hash).where(_owner_dead(cutoff))
    # the condition again on the deleted row itself: on PostgreSQL a row taken over
    # meanwhile is re-checked after its lock, and stays
    result = await connection.execute(
        delete(sessions).where(key.in_(batch.limit(batch_size)), _owner_dead(cutoff)))
    return result.rowcount


async def purge_leases(connection: AsyncConnection, cutoff: float) -> int:
    """Delete the leases that expired at or before ``cutoff`` and own no session."""
    owned = select(sessions.c.owner).where(sessions.c.owner == nodes.c.id)
    result = await connection.execute(
        delete(nodes).where(nodes.c.expires_at <= cutoff, ~exists(owned)))
    return result.rowcount
