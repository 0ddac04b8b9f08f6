"""One writer task per store: the concurrent appends of this process share a transaction.

Each append waits on the counter (on SQL the row lock, on SQLite the database write
lock, on Redis one script call); batching turns n waits into one, so a node's throughput
is bounded by transactions per second times ``batch_max`` rather than by one commit per
emit. Used by the SQL and the Redis store.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .. import metrics
from .._tasks import STOP_TIMEOUT, finish_or_cancel
from ..exceptions import StoreError

logger = logging.getLogger(__name__)

Row = dict[str, Any]
Pending = tuple[Row, "asyncio.Future[int]"]


class BatchWriter:
    """Queues rows, writes up to ``batch_max`` per ``write(rows) -> seqs`` call.

    Every caller's future gets its own seq after COMMIT, or a :class:`StoreError` (with
    the driver error as cause) when the batch's transaction failed. When
    ``retry_alone(error)`` says the failure may come from one row's content (not from
    the connection), the rows are written again one per transaction, so one bad row
    fails its own caller only. No caller is ever left waiting: a writer task that dies
    fails what it held and the next :meth:`submit` starts a new one. After each commit
    ``on_commit`` gets the batch's seqs, once every caller has been given its own.
    """

    def __init__(
        self,
        write: Callable[[list[Row]], Awaitable[list[int]]],
        *,
        batch_max: int,
        on_commit: Callable[[list[int]], None],
        name: str,
        retry_alone: Callable[[Exception], bool] | None = None,
    ) -> None:
        self._write = write
        self._batch_max = batch_max
        self._on_commit = on_commit
        self._name = name
        self._retry_alone = retry_alone
        self._queue: deque[Pending] = deque()
        self._queued = asyncio.Event()
        self._closing = False
        self._task = self._start()

    def _start(self) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(), name=self._name)
        task.add_done_callback(self._stopped)
        return task

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """The task ended: after :meth:`close`, as planned; otherwise fail the queue."""
        if self._closing:
            return
        error = None if task.cancelled() else task.exception()
        logger.error("the writer %s stopped: %r; the next append restarts it", self._name,
                     error or "cancelled", extra={"action": "writer_stopped"})
        self._fail_queued("the store's writer stopped before the packet was written")

    def _fail_queued(self, message: str) -> None:
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.set_exception(StoreError(message))

    async def submit(self, row: Row) -> int:
        """Queue ``row`` and wait for its seq."""
        if self._closing:
            raise StoreError("the store is closed")
        if self._task.done():
            self._task = self._start()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        queued = metrics.clock()
        self._queue.append((row, future))
        self._queued.set()
        seq = await future
        metrics.append_committed(queued)
        return seq

    async def close(self) -> None:
        """Write what is queued (within :data:`STOP_TIMEOUT`), then stop."""
        self._closing = True
        self._queued.set()
        try:
            await finish_or_cancel(self._task, STOP_TIMEOUT)
        except Exception:  # logged when it happened; nothing is left to write with it
            pass
        self._fail_queued("the store closed before the packet was written")

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._queued.clear()
                await self._queued.wait()
                continue
            batch: list[Pending] = []
            while self._queue and len(batch) < self._batch_max:
                pending = self._queue.popleft()
                if not pending[1].cancelled():  # its caller gave up before the write
                    batch.append(pending)
            if batch:
                try:
                    await self._write_batch(batch)
                finally:  # whatever stopped it (a bug, a cancel): no caller waits forever
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(StoreError(
                                "the store's writer stopped before the packet was written"))

    async def _write_batch(self, batch: list[Pending]) -> None:
        try:
            seqs = await self._write([row for row, _ in batch])
            if len(seqs) != len(batch):
                raise StoreError(f"the write returned {len(seqs)} seqs for {len(batch)} rows")
        except Exception as exc:
            if len(batch) > 1 and self._retry_alone is not None and self._retry_alone(exc):
                logger.warning("append of %d packets failed (%s); writing them one by one",
                               len(batch), exc, extra={"action": "append_split"})
                for pending in batch:
                    if not pending[1].cancelled():
                        await self._write_batch([pending])
                return
            metrics.store_error("append")
            logger.warning("append of %d packets failed: %s", len(batch), exc,
                           extra={"action": "append_failed"})
            for _, future in batch:
                if not future.done():
                    error = StoreError(f"the packet was not stored: {exc}")
                    error.__cause__ = exc.__cause__ if isinstance(exc, StoreError) else exc
                    future.set_exception(error)
            return
        metrics.append_batch(len(batch))
        for (_, future), seq in zip(batch, seqs, strict=True):
            if not future.done():
                future.set_result(seq)
        try:
            self._on_commit(seqs)
        except Exception:  # the rows are committed: their callers have their seqs
            logger.exception("the commit callback of %s failed", self._name)
