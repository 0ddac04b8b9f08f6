"""Concurrent requests of one node share one store call.

A reconnect storm brings hundreds of restores at once, each wanting its session taken
and the history's bounds read. One call (one transaction, one script) per request would
queue them all on the store; a :class:`Batcher` sends what is queued as one call and,
while that call runs, queues the next requests for the call after it, so a lone request
waits for nothing and a burst costs a few calls.

A request's call always starts after the request was queued: a caller never gets an
answer read before it asked (what :meth:`Store.bounds` callers rely on, see the server's
``_load_replay``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from ._tasks import Drainers
from .exceptions import StoreError

Request = TypeVar("Request")
Result = TypeVar("Result")


class Batcher(Generic[Request, Result]):
    """Queues requests and runs up to ``batch_max`` of them per ``run(requests)`` call,
    which answers each, in order. A failed call fails each of its callers with a
    :class:`StoreError` caused by the error. No task runs while nothing is queued.

    ``in_flight`` calls may run at once (each with its own requests): a request queued
    while one call is under way starts the next call at once instead of waiting for it,
    so a store's latency is not paid once per call in turn while the loop is busy."""

    def __init__(self, run: Callable[[list[Request]], Awaitable[Sequence[Result]]], *,
                 batch_max: int, name: str, in_flight: int = 1) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max!r}")
        self._run = run
        self._batch_max = batch_max
        self._name = name
        self._queue: deque[tuple[Request, asyncio.Future[Result]]] = deque()
        self._drainers = Drainers(in_flight, name)
        #: calls made so far (for tests and metrics)
        self.calls = 0

    @property
    def queued(self) -> int:
        """Requests waiting for a call (not those of the call under way)."""
        return len(self._queue)

    async def submit(self, request: Request) -> Result:
        """Queue ``request`` and wait for its answer."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        self._drainers.start(self._drain)
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[Request, asyncio.Future[Result]]] = []
        try:
            while self._queue:
                batch = []
                while self._queue and len(batch) < self._batch_max:
                    pending = self._queue.popleft()
                    if not pending[1].done():  # its caller gave up: nothing to ask for it
                        batch.append(pending)
                if batch:
                    await self._call(batch)
            batch = []
        finally:  # cancelled (the loop is closing): nobody is left waiting forever
            last = self._drainers.is_last()
            for _, future in [*batch, *(self._queue if last else ())]:
                if not future.done():
                    future.set_exception(StoreError(f"{self._name} stopped"))
            if last:
                self._queue.clear()

    async def _call(self, batch: list[tuple[Request, asyncio.Future[Result]]]) -> None:
        self.calls += 1
        try:
            results = await self._run([request for request, _ in batch])
            if len(results) != len(batch):
                raise StoreError(f"{len(results)} answers for {len(batch)} requests")
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    # one error object per caller: each raises it with its own traceback
                    error = StoreError(f"{self._name} failed: {exc}")
                    error.__cause__ = exc
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
