"""Purges run by the server process itself.

A store in the server's memory has no other process that could purge it, so its server
always does. A shared store (SQL, Redis) is purged by ``durable-adapter cleanup``, or,
with ``connection_state_recovery={"cleanup_in_server": True}``, by the servers: each
runs the cleanup worker's loop (:class:`~.cleanup.Worker`) in a task, and the worker's
lock (a store's ``cleanup_lock()``, :mod:`._cleanup_lock`) keeps
one active per database; the others stand by and take over when it stops. A standalone
worker takes part in the same lock.

A pass runs every quarter of ``max_disconnection_duration``, between :data:`TICK_MIN`
and :data:`TICK_MAX` seconds, so nothing stays much past its expiry: an expired session
at most a tick, a packet at most its retention plus a tick. Each batch of a pass yields
to the event loop. The retention is the cleanup worker's: the largest window among the
live servers (each records its own beside its lease) plus a margin; on a memory store,
this server's window plus :data:`MEMORY_MARGIN`.
"""

from __future__ import annotations

import asyncio
import logging

from ._cleanup_lock import lock_of
from ._tasks import finish_or_cancel
from .cleanup import DEFAULT_BATCH_SIZE, CleanupSettings, Worker
from .stores.base import Store

logger = logging.getLogger(__name__)

TICK_MIN, TICK_MAX = 0.5, 30.0  # seconds between two passes (a quarter of the window)
#: seconds a memory store keeps packets beyond ``max_disconnection_duration``: one
#: process has no clock skew and no lagging node, only packets in flight
MEMORY_MARGIN = 5.0
STOP_GRACE = 2.0  # seconds a stopping server gives the batch in flight


def interval_for(max_disconnection_duration: float) -> float:
    return min(TICK_MAX, max(TICK_MIN, max_disconnection_duration / 4))


class ServerCleanup:
    """The purge loop of one server, started and stopped with its manager.

    :attr:`active` tells whether this server holds the lock (it purges);
    :attr:`passes` counts its passes.
    """

    def __init__(self, store: Store, *, max_disconnection_duration: float,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.store = store
        self.lock = lock_of(store)
        self.interval = interval_for(max_disconnection_duration)
        # a shared store: the largest window among the live servers (this one's is
        # recorded too); memory: this server's, with a smaller margin
        self.settings = CleanupSettings(
            interval=self.interval, fallback_window=max_disconnection_duration,
            retention=None if store.shared else max_disconnection_duration + MEMORY_MARGIN,
            batch_size=batch_size)
        self._stop = asyncio.Event()
        self._worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self.lock.held

    @property
    def passes(self) -> int:
        return 0 if self._worker is None else self._worker.summary.passes

    def start(self) -> None:
        if self._task is not None:
            return
        self._stop.clear()
        self._worker = Worker(self.store, self.lock, self.settings, self._stop, self.interval)
        self._worker.log_empty = False
        self._task = asyncio.create_task(self._serve(self._worker),
                                         name=f"durable_adapter cleanup {self.store!r}")

    async def _serve(self, worker: Worker) -> None:
        try:
            await worker.serve()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug, not the store (the worker retries those): say so
            logger.exception("the in-server cleanup of %r stopped", self.store,
                             extra={"action": "cleanup_stopped"})

    async def stop(self) -> None:
        """Stop after the batch in flight (bounded) and give the lock up."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            await finish_or_cancel(task, STOP_GRACE)
        try:
            await asyncio.wait_for(self.lock.release(), STOP_GRACE)
        except Exception:  # it goes with the connection, or expires
            logger.warning("could not release the cleanup lock", exc_info=True)
