"""One writer task per SQL store: concurrent appends of this process share a transaction.

Each append waits on the counter row lock (on SQLite the database write lock) for its
transaction; batching turns n waits into one, so a node's throughput is bounded by
transactions per second times ``batch_max`` rather than by one commit per emit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .._tasks import finish_or_cancel
from ..exceptions import StoreError

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 5.0  # seconds close() lets the writer drain before cancelling it

Row = dict[str, Any]


class BatchWriter:
    """Queues rows, writes up to ``batch_max`` per ``write(rows) -> seqs`` call.

    Every caller's future gets its own seq after COMMIT, or a :class:`StoreError` (with
    the driver error as cause) when the batch's transaction failed.
    """

    def __init__(
        self,
        write: Callable[[list[Row]], Awaitable[list[int]]],
        *,
        batch_max: int,
        on_commit: Callable[[], None],
        name: str,
    ) -> None:
        self._write = write
        self._batch_max = batch_max
        self._on_commit = on_commit
        self._queue: deque[tuple[Row, asyncio.Future[int]]] = deque()
        self._queued = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=name)

    async def submit(self, row: Row) -> int:
        """Queue ``row`` and wait for its seq."""
        if self._closing:
            raise StoreError("the store is closed")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((row, future))
        self._queued.set()
        return await future

    async def close(self) -> None:
        """Write what is queued (within :data:`STOP_TIMEOUT`), then stop."""
        self._closing = True
        self._queued.set()
        await finish_or_cancel(self._task, STOP_TIMEOUT)
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.set_exception(StoreError("the store closed before the packet was written"))

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._queued.clear()
                await self._queued.wait()
                continue
            batch: list[tuple[Row, asyncio.Future[int]]] = []
            while self._queue and len(batch) < self._batch_max:
                pending = self._queue.popleft()
                if not pending[1].cancelled():  # its caller gave up before the write
                    batch.append(pending)
            if batch:
                await self._write_batch(batch)

    async def _write_batch(self, batch: list[tuple[Row, asyncio.Future[int]]]) -> None:
        try:
            seqs = await self._write([row for row, _ in batch])
        except Exception as exc:
            logger.warning(
                "append of %d packets failed: %s",
                len(batch),
                exc,
                extra={"action": "append_failed"},
            )
            for _, future in batch:
                if not future.done():
                    error = StoreError(f"the packet was not stored: {exc}")
                    error.__cause__ = exc.__cause__ if isinstance(exc, StoreError) else exc
                    future.set_exception(error)
            return
        for (_, future), seq in zip(batch, seqs, strict=True):
            if not future.done():
                future.set_result(seq)
        self._on_commit()
