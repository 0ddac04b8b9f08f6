"""Background tasks: retrying after failures with back-off, stopping them cleanly, and a
few draining one queue."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Coroutine
from typing import Any

STOP_TIMEOUT = 5.0  # seconds a stopping task may take to finish before it is cancelled


class Backoff:
    """The waits after consecutive failures, with full jitter: each is drawn at random
    between 0 and a ceiling that starts at ``first`` seconds and doubles up to ``most``.

    Drawn, not fixed: the nodes and workers that an outage failed together would
    otherwise retry together, and hammer the store together when it comes back.

    Usage::

        backoff = Backoff(1.0, 60.0)
        while running:
            try:
                await work()
                backoff.reset()
            except Exception as exc:
                logger.warning("failed, retrying in %.1f s: %s", backoff.delay, exc)
                await backoff.wait(stop_event)

    or, to wait by other means, ``delay = backoff.next()`` and sleep ``delay`` seconds.
    """

    def __init__(self, first: float, most: float) -> None:
        if not 0 < first <= most:
            raise ValueError(f"need 0 < first <= most, got {first!r} and {most!r}")
        self.first, self.most = first, most
        self._ceiling = first
        #: the next wait, drawn already (so that it can be logged before it is taken)
        self.delay = self._draw()

    def _draw(self) -> float:
        return random.uniform(0.0, self._ceiling)

    def reset(self) -> None:
        """After a success: the next failure waits as little as the first one."""
        self._ceiling = self.first
        self.delay = self._draw()

    def next(self) -> float:
        """The wait to take now (:attr:`delay`); the one after it is drawn under a
        doubled ceiling."""
        delay = self.delay
        self._ceiling = min(self._ceiling * 2, self.most)
        self.delay = self._draw()
        return delay

    async def wait(self, wake: asyncio.Event | None = None) -> None:
        """Wait :meth:`next` seconds, less if ``wake`` is set meanwhile."""
        delay = self.next()
        if wake is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)


async def finish_or_cancel(task: asyncio.Task[Any], grace: float = STOP_TIMEOUT) -> None:
    """Wait up to ``grace`` seconds for ``task`` (already asked to stop), then cancel it.

    Shielded: a caller that is itself cancelled does not tear the task mid-query.
    Errors the task ended with propagate, as from ``await task``.
    """
    try:
        await asyncio.wait_for(asyncio.shield(task), grace)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Drainers:
    """Up to ``limit`` tasks draining one queue at once: each request queued while fewer
    run starts another, so a busy loop does not pay a store's latency once per call in
    turn. No task runs while nothing is queued."""

    def __init__(self, limit: int, name: str) -> None:
        if limit < 1:
            raise ValueError(f"in_flight must be >= 1, got {limit!r}")
        self._limit = limit
        self._name = name
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, drain: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start ``drain()`` in a task of its own unless ``limit`` already run."""
        # a task that has just returned is done, though its callback has not removed it
        if sum(not task.done() for task in self._tasks) < self._limit:
            task = asyncio.create_task(drain(), name=self._name)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def is_last(self) -> bool:
        """Whether the calling task is the only one still draining (then what is left
        queued is nobody else's to answer)."""
        current = asyncio.current_task()
        return all(task is current or task.done() for task in self._tasks)
