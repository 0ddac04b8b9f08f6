"""Control messages of the SQL store: rows of the ``control`` table, written by the batch
writer beside packets and read by the follower in the same pass.

Why through the writer: a row written under the counter row lock gets an id in commit
order (a reader never sees id 11 before 10) and an ``after_seq``, the top of the packet
history at that moment. The follower delivers each message right after packet
``after_seq``, so ``enter_room(sid, r)`` followed by ``emit(to=r)`` on one node is applied
in that order on every node, as python-socketio's single pub/sub channel would.
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ...exceptions import StoreError
from ..base import ControlListener, ControlMessage
from ..batch_writer import BatchWriter
from .schema import control

logger = logging.getLogger(__name__)

#: Key marking a writer row as a control message (packet rows never have it).
CONTROL_ROW = "_control"

CONTROL_RETENTION = 60.0  # seconds a control row is kept: messages are live only
PRUNE_EVERY = 10.0  # seconds between a writer's prunes of old control rows
PRUNE_BATCH = 1000  # rows per prune by a writer, so it never holds the lock for long


@dataclass(frozen=True, kw_only=True)
class ControlRecord:
    """A control message as read back: its id and where it sits in the packet history."""

    id: int
    after_seq: int
    message: ControlMessage


def control_row(message: ControlMessage) -> dict[str, Any]:
    """The writer row for ``message``; the body must be JSON (a TypeError otherwise)."""
    return {
        CONTROL_ROW: {
            "origin": message.origin,
            "target": message.target,
            "method": message.method,
            "body": json.dumps(message.body),
        }
    }


def is_control(row: dict[str, Any]) -> bool:
    return CONTROL_ROW in row


def read_after(after: int, limit: int) -> Select[Any]:
    return select(control).where(control.c.id > after).order_by(control.c.id).limit(limit)


def record_from_row(row: Any) -> ControlRecord:
    return ControlRecord(
        id=row.id,
        after_seq=row.after_seq,
        message=ControlMessage(
            method=row.method, origin=row.origin, target=row.target, body=json.loads(row.body)
        ),
    )


async def top_id(connection: AsyncConnection) -> int:
    """The newest control id (0 when none): a follower starts after it."""
    return int((await connection.execute(select(func.max(control.c.id)))).scalar() or 0)


async def prune(connection: AsyncConnection, cutoff: float, limit: int) -> int:
    """Delete up to ``limit`` of the oldest rows created before ``cutoff``."""
    # the table holds about a minute of messages: no index on created_at is worth it
    old = (
        select(control.c.id)
        .where(control.c.created_at < cutoff)
        .order_by(control.c.id)
        .limit(limit)
    )
    result = await connection.execute(delete(control).where(control.c.id.in_(old)))
    return result.rowcount


class SQLControl:
    """Mixed into :class:`~.sql.SQLStore`: publishing, reading and pruning control rows."""

    _writer: BatchWriter | None
    _control_pruned_at: float = 0.0

    def _read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError  # SQLStore's

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError  # SQLStore's

    async def publish_control(self, message: ControlMessage) -> None:
        """Queue ``message`` with this node's packets; returns once committed, else raises."""
        if self._writer is None:
            raise StoreError("the store is not open")
        await self._writer.submit(control_row(message))

    async def _read_control(self, *, after: int, limit: int) -> list[ControlRecord]:
        async with self._read() as connection:
            rows = (await connection.execute(read_after(after, limit))).all()
        return [record_from_row(row) for row in rows]

    async def _control_top(self) -> int:
        async with self._read() as connection:
            return await top_id(connection)

    async def _handle_control(self, message: ControlMessage) -> None:
        listener: ControlListener | None = getattr(self, "_control_listener", None)
        if listener is not None:
            await listener(message)

    async def _prune_control(self, now: float, limit: int = PRUNE_BATCH) -> int:
        async with self._write() as connection:
            return await prune(connection, now - CONTROL_RETENTION, limit)

    async def _maybe_prune_control(self, now: float) -> None:
        """Every :data:`PRUNE_EVERY` seconds, after a COMMIT: the batch is stored whatever
        happens here, and a node that publishes cleans up even with no cleanup worker."""
        if now - self._control_pruned_at < PRUNE_EVERY:
            return
        self._control_pruned_at = now
        try:
            await self._prune_control(now)
        except StoreError as exc:
            logger.warning("pruning control messages failed: %s", exc,
                           extra={"action": "control_prune_failed"})
