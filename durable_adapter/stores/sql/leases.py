"""The SQL store's live sessions and node leases: conditional upserts, the take-over
transaction, and the purge of a dead node's sessions.

A take is one write transaction: the session row is read ``FOR UPDATE`` (PostgreSQL: of
concurrent takes under READ COMMITTED, the later ones wait for the row lock and then read
the winner's owner; SQLite: the whole transaction holds the database write lock from its
``BEGIN IMMEDIATE``), its owner's lease is read, and :func:`.base.decide_take` rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..base import TAKE, OwnedBy, Session, decide_take
from . import dialect
from .schema import nodes, session_from_row, session_values, sessions

_KEY_COLUMNS = ("namespace", "pid_hash")


def _session_key(namespace: str, pid_hash: str) -> ColumnElement[bool]:
    return and_(sessions.c.namespace == namespace, sessions.c.pid_hash == pid_hash)


async def upsert_sessions(connection: AsyncConnection, sessions_: Sequence[Session],
                          node: str | None) -> None:
    """Write every session with one executemany; with ``node``, rows another node owns
    are left alone (``ON CONFLICT DO UPDATE ... WHERE``)."""
    # one row per key: PostgreSQL refuses a statement that updates one row twice
    rows = list({(s.namespace, s.pid_hash): session_values(s) for s in sessions_}.values())
    if not rows:
        return
    statement = dialect.insert_for(connection, sessions)
    changed = {column.name: statement.excluded[column.name] for column in sessions.c
               if column.name not in _KEY_COLUMNS}
    where = None if node is None else or_(sessions.c.owner.is_(None), sessions.c.owner == node)
    await connection.execute(
        statement.on_conflict_do_update(
            index_elements=[sessions.c.namespace, sessions.c.pid_hash], set_=changed,
            where=where),
        rows)


async def take_session(connection: AsyncConnection, namespace: str, pid_hash: str, *,
                       node: str, now: float, window: float, force_from: str | None
                       ) -> Session | OwnedBy | None:
    """The take-over, inside the caller's write transaction."""
    row = (await connection.execute(
        select(sessions).where(_session_key(namespace, pid_hash)).with_for_update()
    )).first()
    if row is None:
        return None
    lease: Any = None
    if row.owner is not None and row.owner != node:
        lease = (await connection.execute(
            select(nodes.c.expires_at).where(nodes.c.id == row.owner))).scalar()
    verdict = decide_take(owner=row.owner, expires_at=row.expires_at, lease_expires=lease,
                          node=node, now=now, window=window, force_from=force_from)
    if verdict is None or isinstance(verdict, OwnedBy):
        return verdict
    session = session_from_row(row)
    if verdict == TAKE:
        await connection.execute(
            update(sessions).where(_session_key(namespace, pid_hash)).values(owner=node))
        session = dataclasses.replace(session, owner=node)
    return session


async def renew_lease(connection: AsyncConnection, node: str, expires_at: float) -> None:
    statement = dialect.insert_for(connection, nodes).values(id=node, expires_at=expires_at)
    await connection.execute(statement.on_conflict_do_update(
        index_elements=[nodes.c.id], set_={"expires_at": statement.excluded.expires_at}))


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
