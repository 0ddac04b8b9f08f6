"""Stopping a background task: let it finish what it is doing, cancel it only if it won't."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def finish_or_cancel(task: asyncio.Task[Any], grace: float) -> None:
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
