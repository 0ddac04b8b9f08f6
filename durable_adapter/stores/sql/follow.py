"""The follower of a SQL store: reads ``seq > cursor`` in pages, in seq order, forever.

NOTIFY-style doorbells and this process's own commits set ``wakeup``; otherwise the
follower polls a cheap change marker every ``poll_interval`` seconds. The table is the
truth: after every wake-up, reconnect or failure it reads from its cursor again.

Control messages are read in the same pass (``id > control cursor``) and each is handed
over right after the packet it followed (:mod:`.control`); those about a session rather
than packets (``UNORDERED_CONTROL``: a handover) are handed as soon as they are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ... import metrics
from ..._tasks import Backoff
from ..base import UNORDERED_CONTROL, ControlMessage, PacketListener, StoredPacket
from ..delivery import hand_over
from .control import ControlRecord

logger = logging.getLogger(__name__)

FOLLOW_PAGE = 500  # packets per read
RETRY_MIN, RETRY_MAX = 1.0, 60.0  # seconds of back-off after a failed read, doubling


class _Reader(Protocol):
    """A page after ``after``: the packets that decode, the last seq read, and whether
    the page was full."""

    async def __call__(self, *, after: int, limit: int
                       ) -> tuple[list[StoredPacket], int, bool]: ...


class _ControlReader(Protocol):
    async def __call__(self, *, after: int, limit: int) -> list[ControlRecord]: ...


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
        read_control: _ControlReader,
        control_listener: Callable[[ControlMessage], Awaitable[None]],
        control_cursor: int,
        delivered: Callable[[], int] | None = None,
    ) -> None:
        self._engine = engine
        self._read_control = read_control
        self._control_listener = control_listener
        self._control_cursor = control_cursor
        self._delivered = delivered
        self._read = read
        self._change_marker = change_marker
        self._wakeup = wakeup
        self._following = following
        self._poll_interval = poll_interval
        self._stopping = False
        self._cursor = 0
        #: ids of unordered control records handed ahead of their place
        self._early: set[int] = set()

    def stop(self) -> None:
        """Ask :meth:`run` to return at its next wait or page, never mid-query."""
        self._stopping = True
        self._wakeup.set()

    async def run(self, listener: PacketListener, cursor: int) -> None:
        self._following.set()
        # kept on self: a read failing after some pages were handed over must not
        # hand them over again
        self._cursor = cursor
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
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
                    await self._deliver(listener)
                    backoff.reset()
                    while not self._stopping:
                        if await self._wait_for_change(marker_connection, marker):
                            break
                except Exception as exc:  # survive any failed read; CancelledError passes
                    metrics.store_error("follow")
                    logger.warning(
                        "following the store failed, retrying in %.1f s: %s",
                        backoff.delay,
                        exc,
                        extra={"action": "follow_retry"},
                    )
                    if marker_connection is not None:
                        with contextlib.suppress(Exception):
                            await marker_connection.close()
                        marker_connection = None
                    await backoff.wait(self._wakeup)  # or stop()
        finally:
            self._following.clear()
            if marker_connection is not None:
                # shielded: a cancelled follower still returns its connection to the pool
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(marker_connection.close())

    async def _deliver(self, listener: PacketListener) -> None:
        """Hand every packet after the cursor, and the control messages between them, to
        the listeners.

        Packets are read before control rows: a message placed after packet k committed
        before packet k + 1, so every message that belongs before a packet just read is
        visible in the control read that follows. A message placed after a packet not
        read yet waits for the next page.
        """
        waited = False
        while not self._stopping:
            if self._delivered is not None:
                # delivered without us (this node's own packets): never read them back
                self._cursor = max(self._cursor, self._delivered())
            batch, through, full = await self._read(after=self._cursor, limit=FOLLOW_PAGE)
            records = await self._read_control(after=self._control_cursor, limit=FOLLOW_PAGE)
            if through == self._cursor and not records:
                return
            await self._hand_unordered(records)
            # a message still waiting after a fresh empty page follows packets that
            # are gone (purged or a reset history): nothing left to order it against
            reach = through if through > self._cursor else (None if waited else self._cursor)
            done = 0
            waited = False
            for record in records:
                if reach is not None and record.after_seq > reach:
                    waited = True
                    break
                before = [p for p in batch[done:] if p.seq <= record.after_seq]
                if before:
                    await self._hand(listener, before)
                    done += len(before)
                await self._hand_control(record)
            await self._hand(listener, batch[done:])
            # past the rows that could not be decoded too: they are never read again
            self._cursor = max(self._cursor, through)
            if not full and len(records) < FOLLOW_PAGE and not waited:
                # caught up as of this read: what commits later rings again (a doorbell,
                # this process's commit, the poll), rather than reading until a page
                # comes back empty, which a node emitting without pause never lets happen
                return

    async def _hand(self, listener: PacketListener, batch: list[StoredPacket]) -> None:
        if batch:  # counted as delivered even if the listener fails: again would duplicate
            self._cursor = batch[-1].seq
            await hand_over(listener, batch)

    async def _hand_unordered(self, records: list[ControlRecord]) -> None:
        """Hand the records that need no place among the packets at once (each once)."""
        for record in records:
            if record.message.method in UNORDERED_CONTROL and record.id not in self._early:
                self._early.add(record.id)
                await self._call_control(record)

    async def _hand_control(self, record: ControlRecord) -> None:
        self._control_cursor = record.id
        if record.id in self._early:  # handed when it was first read
            self._early.discard(record.id)
            return
        await self._call_control(record)

    async def _call_control(self, record: ControlRecord) -> None:
        try:
            await self._control_listener(record.message)
        except Exception:  # a bad message must not stop the follower
            logger.exception(
                "the control listener failed on %r",
                record.message.method,
                extra={"action": "control_failed"},
            )

    async def _wait_for_change(self, connection: AsyncConnection, marker: object) -> bool:
        """Wait one poll interval; True when something may have been appended."""
        try:
            await asyncio.wait_for(self._wakeup.wait(), self._poll_interval)
            return True
        except TimeoutError:
            return await self._change_marker(connection) != marker
