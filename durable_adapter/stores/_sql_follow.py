"""The follower of a SQL store: reads ``seq > cursor`` in pages, in seq order, forever.

NOTIFY-style doorbells and this process's own commits set ``wakeup``; otherwise the
follower polls a cheap change marker every ``poll_interval`` seconds. The table is the
truth: after every wake-up, reconnect or failure it reads from its cursor again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .base import PacketListener, StoredPacket

logger = logging.getLogger(__name__)

FOLLOW_PAGE = 500  # packets per read
RETRY_MIN, RETRY_MAX = 1.0, 60.0  # seconds of back-off after a failed read, doubling


class _Reader(Protocol):
    async def __call__(self, *, after: int, limit: int) -> list[StoredPacket]: ...


class SQLFollower:
    """Runs one listener from a cursor; :meth:`run` is the body of the store's task."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        read: _Reader,
        change_marker: Callable[[AsyncConnection], Awaitable[object]],
        wakeup: asyncio.Event,
        following: asyncio.Event,
        poll_interval: float,
    ) -> None:
        self._engine = engine
        self._read = read
        self._change_marker = change_marker
        self._wakeup = wakeup
        self._following = following
        self._poll_interval = poll_interval
        self._stopping = False

    def stop(self) -> None:
        """Ask :meth:`run` to return at its next wait or page, never mid-query."""
        self._stopping = True
        self._wakeup.set()

    async def run(self, listener: PacketListener, cursor: int) -> None:
        self._following.set()
        delay = RETRY_MIN
        # a dedicated connection for the change marker (SQLite's data_version is per
        # connection); the pages are read through the pool
        marker_connection: AsyncConnection | None = None
        try:
            while not self._stopping:
                try:
                    if marker_connection is None:
                        marker_connection = await self._engine.connect()
                    # clear and take the marker before reading, so a commit during
                    # the read wakes the next wait instead of being missed
                    self._wakeup.clear()
                    marker = await self._change_marker(marker_connection)
                    cursor = await self._deliver(listener, cursor)
                    delay = RETRY_MIN
                    while not self._stopping:
                        if await self._wait_for_change(marker_connection, marker):
                            break
                except Exception as exc:  # survive any failed read; CancelledError passes
                    logger.warning(
                        "following the store failed, retrying in %.0f s: %s",
                        delay,
                        exc,
                        extra={"action": "follow_retry"},
                    )
                    if marker_connection is not None:
                        with contextlib.suppress(Exception):
                            await marker_connection.close()
                        marker_connection = None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), delay)  # or stop()
                    delay = min(delay * 2, RETRY_MAX)
        finally:
            self._following.clear()
            if marker_connection is not None:
                # shielded: a cancelled follower still returns its connection to the pool
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(marker_connection.close())

    async def _deliver(self, listener: PacketListener, cursor: int) -> int:
        """Hand every packet after ``cursor`` to ``listener``; return the new cursor."""
        while not self._stopping:
            batch = await self._read(after=cursor, limit=FOLLOW_PAGE)
            if not batch:
                return cursor
            cursor = batch[-1].seq
            try:
                await listener(batch)
            except Exception:
                # the packets count as delivered: delivering them again would duplicate
                logger.exception(
                    "the packet listener failed on seqs %d..%d",
                    batch[0].seq,
                    cursor,
                    extra={"action": "listener_failed"},
                )
        return cursor

    async def _wait_for_change(self, connection: AsyncConnection, marker: object) -> bool:
        """Wait one poll interval; True when something may have been appended."""
        try:
            await asyncio.wait_for(self._wakeup.wait(), self._poll_interval)
            return True
        except TimeoutError:
            return await self._change_marker(connection) != marker
