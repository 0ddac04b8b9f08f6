"""Background tasks: retrying after failures with back-off, and stopping them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

STOP_TIMEOUT = 5.0  # seconds a stopping task may take to finish before it is cancelled


class Backoff:
    """The wait after consecutive failures: ``first`` seconds, doubling up to ``most``.

    Usage::

        backoff = Backoff(1.0, 60.0)
        while running:
            try:
                await work()
                backoff.reset()
            except Exception as exc:
                logger.warning("failed, retrying in %.0f s: %s", backoff.delay, exc)
                await backoff.wait(stop_event)
    """

    def __init__(self, first: float, most: float) -> None:
        self.first, self.most = first, most
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    async def wait(self, wake: asyncio.Event | None = None) -> None:
        """Wait :attr:`delay` seconds (less if ``wake`` is set meanwhile), then double it."""
        if wake is None:
            await asyncio.sleep(self.delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.delay)
        self.delay = min(self.delay * 2, self.most)


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
