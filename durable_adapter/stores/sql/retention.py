"""The SQL store's deletes of expired sessions and old packets, one bounded batch each.

Batches keep every delete transaction short: appends wait on the same locks.
"""

from __future__ import annotations

from sqlalchemy import and_, delete, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import SINGLETON_ID, counter, packet_targets, packets, sessions


async def purge_sessions(connection: AsyncConnection, now: float, batch_size: int) -> int:
    """Delete up to ``batch_size`` disconnected sessions expired at ``now`` (an owned
    session goes with its owner's lease: :mod:`.leases`)."""
    key = tuple_(sessions.c.namespace, sessions.c.pid_hash)
    expired = and_(sessions.c.owner.is_(None), sessions.c.expires_at <= now)
    batch = select(sessions.c.namespace, sessions.c.pid_hash).where(expired)
    # the condition again on the row itself: on PostgreSQL a row taken meanwhile stays
    result = await connection.execute(
        delete(sessions).where(key.in_(batch.limit(batch_size)), expired))
    return result.rowcount


async def purged_through(connection: AsyncConnection) -> int:
    """The watermark: every packet up to it is deleted already."""
    query = select(counter.c.purged_through).where(counter.c.id == SINGLETON_ID)
    return int((await connection.execute(query)).scalar() or 0)


async def purge_packets(connection: AsyncConnection, cutoff: float, batch_size: int) -> int:
    """Delete one batch: a prefix of the history, so no hole opens above purged_through.

    Clocks of different nodes may disagree a little, so created_at is not strictly
    ordered by seq; taking "everything up to the newest old packet of the next batch"
    keeps ``purged_through < seq <= top`` complete at the cost of a few early deletes.

    Both statements start above the watermark: the entries of rows deleted before stay
    in the seq index until PostgreSQL vacuums them, and an unbounded scan from the
    index's start would walk all of them again (each batch of a pass slower than the
    last). Bounded, every batch reads about ``batch_size`` entries.
    """
    after = await purged_through(connection)
    head = (select(packets.c.seq, packets.c.created_at).where(packets.c.seq > after)
            .order_by(packets.c.seq))
    head_sub = head.limit(batch_size).subquery()
    last_old = select(func.max(head_sub.c.seq)).where(head_sub.c.created_at < cutoff)
    through = (await connection.execute(last_old)).scalar()
    if through is None:
        return 0
    result = await connection.execute(
        delete(packets).where(packets.c.seq > after, packets.c.seq <= through))
    # the target index rows go with their packets, in the same transaction
    await connection.execute(delete(packet_targets).where(packet_targets.c.seq > after,
                                                          packet_targets.c.seq <= through))
    await connection.execute(
        update(counter)
        .where(counter.c.id == SINGLETON_ID, counter.c.purged_through < through)
        .values(purged_through=through)
    )
    return result.rowcount
