"""What a restoring socket may be owed, read from the store's target index.

A socket is owed packets of its namespace sent to the whole namespace, to its sid, or to
a room it was in at the time. Each of those is one ``(namespace, target)`` of the index
(:mod:`.stores.targets`): the reader reads each target's packets of ``(after, until]``
in pages and merges them in seq order, so the work follows what the socket may be owed,
not what the rest of the application emitted meanwhile.

A reconnect storm brings many restores at once. They share store calls: a round of
pages for up to ``batch_max`` restores is one :meth:`Store.read_targets` call (one
query, one script), identical pages (one room, many sockets) are read once, and a restore that
arrives while the rounds under way run joins the next one (or starts one of its own,
up to :data:`ROUNDS_IN_FLIGHT`). Each page is read after its restore was
queued, so a caller never gets an answer read before it asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from ._tasks import Drainers
from .exceptions import StoreError
from .stores.base import StoredPacket
from .stores.targets import TargetRange

ROUNDS_IN_FLIGHT = 4  # store calls of one reader under way at once

ReadTargets = Callable[[Sequence[TargetRange]], Awaitable[list[list[StoredPacket]]]]


class TooMany(Exception):
    """More packets are owed than the cap allows."""


@dataclass(eq=False)
class _Cursor:
    """One target of one request: read through ``read_to`` (all of it once exhausted),
    the packets read but not merged yet in ``buffer``."""

    target: str
    read_to: int
    exhausted: bool = False
    buffer: list[StoredPacket] = field(default_factory=list)


@dataclass(eq=False)
class _Request:
    namespace: str
    until: int
    owed: Callable[[StoredPacket], bool]
    cap: int
    cursors: list[_Cursor]
    future: asyncio.Future[list[StoredPacket]]
    packets: list[StoredPacket] = field(default_factory=list)

    def frontier(self) -> int:
        """Every packet of every target up to here has been read."""
        return min(self.until if c.exhausted else c.read_to for c in self.cursors)


class OwedReader:
    """Reads, for many restores at once, the packets each may be owed.

    :param read: the store's :meth:`~.stores.base.Store.read_targets` (looked up at
        each call through this callable, so a wrapper installed later is used).
    :param page: packets read per target per round.
    :param batch_max: requests served by one round at most; the others wait for the
        next round.
    :param in_flight: rounds under way at once at most (each serving its own requests),
        so a store's latency is not paid once per round in turn.
    """

    def __init__(self, read: ReadTargets, *, page: int, batch_max: int,
                 in_flight: int = ROUNDS_IN_FLIGHT) -> None:
        if page < 1 or batch_max < 1 or in_flight < 1:
            raise ValueError("page, batch_max and in_flight must be >= 1")
        self._read = read
        self._page = page
        self._batch_max = batch_max
        self._queue: list[_Request] = []
        self._drainers = Drainers(in_flight, "reading owed packets")
        #: store calls made so far (for tests)
        self.calls = 0

    async def read(self, namespace: str, targets: Sequence[str], *, after: int, until: int,
                   owed: Callable[[StoredPacket], bool], cap: int) -> list[StoredPacket]:
        """The packets of ``namespace`` sent to any of ``targets`` in ``(after, until]``
        for which ``owed`` is true, in seq order, each once. Raises :class:`TooMany`
        as soon as more than ``cap`` are owed, :class:`StoreError` when the store fails.
        """
        if until <= after:
            return []
        future: asyncio.Future[list[StoredPacket]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(
            namespace, until, owed, cap,
            [_Cursor(target, after) for target in dict.fromkeys(targets)], future))
        self._drainers.start(self._drain)
        return await future

    async def _drain(self) -> None:
        active: list[_Request] = []
        try:
            while self._queue or active:
                free = self._batch_max - len(active)
                active += self._queue[:free]
                del self._queue[:free]
                active = [r for r in active if not r.future.done()]  # callers gone
                if active:
                    await self._round(active)
                    active = [r for r in active if not r.future.done()]
        finally:  # cancelled (the loop is closing): nobody is left waiting forever
            last = self._drainers.is_last()
            for request in [*active, *(self._queue if last else ())]:
                if not request.future.done():
                    request.future.set_exception(StoreError("reading owed packets stopped"))
            if last:
                self._queue.clear()

    async def _round(self, active: list[_Request]) -> None:
        """One page for each cursor holding its request back, in one store call."""
        ranges: dict[TargetRange, int] = {}
        wanted: list[tuple[_Cursor, TargetRange]] = []
        for request in active:
            frontier = request.frontier()
            for cursor in request.cursors:
                if not cursor.exhausted and cursor.read_to == frontier:
                    wanted_range = TargetRange(request.namespace, cursor.target,
                                               cursor.read_to, request.until, self._page)
                    ranges.setdefault(wanted_range, len(ranges))
                    wanted.append((cursor, wanted_range))
        self.calls += 1
        try:
            pages = await self._read(list(ranges))
            if len(pages) != len(ranges):
                raise StoreError(f"{len(pages)} answers for {len(ranges)} ranges")
        except Exception as exc:
            for request in active:
                if request.future.done():
                    continue
                error = StoreError(f"reading owed packets failed: {exc}")
                error.__cause__ = exc
                request.future.set_exception(error)
            return
        for cursor, wanted_range in wanted:
            got = pages[ranges[wanted_range]]
            cursor.buffer.extend(got)
            if len(got) < wanted_range.limit:
                cursor.exhausted = True
            else:
                cursor.read_to = got[-1].seq
        for request in active:
            self._merge(request)

    @staticmethod
    def _merge(request: _Request) -> None:
        """Move what every target has been read through from the buffers to the
        request's packets, in seq order, each once; answer it when done."""
        if request.future.done():  # its caller gave up
            return
        frontier = request.frontier()
        ready: dict[int, StoredPacket] = {}
        for cursor in request.cursors:
            buffer = cursor.buffer
            taken = 0
            while taken < len(buffer) and buffer[taken].seq <= frontier:
                ready.setdefault(buffer[taken].seq, buffer[taken])
                taken += 1
            del buffer[:taken]
        owed = request.owed
        request.packets.extend(p for seq, p in sorted(ready.items()) if owed(p))
        if len(request.packets) > request.cap:
            request.future.set_exception(TooMany())
        elif frontier >= request.until:
            request.future.set_result(request.packets)
