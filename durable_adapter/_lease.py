"""A node's lease in the store: how other nodes tell a live node from a dead one.

The lease is renewed every third of its expiry. A reconnect whose session is owned by a
node with a valid lease asks that node to let go (:mod:`._cluster`); one owned by a node
whose lease expired (killed, frozen, cut off) is taken over at once.

A lapse is judged by time, not by errors: any renewal that commits more than an expiry
after the previous one did (the store failed meanwhile, or the event loop stood still:
SIGSTOP, CPU throttling, a long synchronous handler) leaves a moment in which other
nodes could take this node's sessions. The node is then told through ``on_regained``,
in a task of its own while renewals go on, and closes only the sockets whose sessions
now belong to another node (never two live sockets with one sid). Closing every socket
at the lapse instead would turn a slow store into a reconnect storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from ._tasks import Backoff, finish_or_cancel
from .stores.base import Store

logger = logging.getLogger(__name__)

STOP_GRACE = 1.0  # seconds a stopping lease gives a store call under way
CHECK_RETRY_MIN = 0.5  # seconds before a failed ownership check runs again


class Lease:
    """Keeps ``node``'s lease alive in ``store`` while started."""

    def __init__(self, store: Store, node: str, expiry: float, *,
                 on_regained: Callable[[], Awaitable[None]] | None = None) -> None:
        """:param on_regained: run (in a task) after a renewal that followed a lapse."""
        self.store = store
        self.node = node
        self.expiry = expiry
        self.on_regained = on_regained
        self._renewed_at = 0.0  # monotonic time of the last renewal that committed
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._check: asyncio.Task[None] | None = None
        self._check_again = False
        self._renewing: asyncio.Future[bool] | None = None
        #: lapses seen so far (a renewal more than an expiry after the previous one)
        self.lapses = 0

    @property
    def lapsed(self) -> bool:
        """True when the last renewal that committed is more than an expiry ago: other
        nodes may be taking this node's sessions right now."""
        return time.monotonic() - self._renewed_at >= self.expiry

    async def start(self) -> None:
        """Take the lease (a failure raises: the node cannot own sessions), then renew."""
        await self._renew()
        self._stop.clear()
        self._task = asyncio.create_task(self._keep(), name=f"lease {self.node}")

    async def stop(self, *, drop: bool) -> None:
        """Stop renewing; with ``drop``, give the lease up (its sessions were saved)."""
        self._stop.set()
        for running in (self._task, self._check):
            if running is not None:  # a renewal hung on a failing store is cut short
                await finish_or_cancel(running, STOP_GRACE)
        self._task = self._check = None
        if drop:
            try:
                await asyncio.wait_for(self.store.drop_lease(self.node), STOP_GRACE)
            except Exception:  # it expires by itself
                logger.warning("could not drop the lease of %s", self.node, exc_info=True)

    async def _renew(self) -> bool:
        """Renew; True when this renewal ends a lapse (the previous one that committed
        was more than an expiry before this one committed)."""
        started = time.monotonic()
        await self.store.renew_lease(self.node, now=time.time(), expiry=self.expiry)
        lapsed = self._renewed_at > 0 and time.monotonic() - self._renewed_at >= self.expiry
        # counted from before the write: the lease may have been seen as of then
        self._renewed_at = started
        return lapsed

    async def _keep(self) -> None:
        warned = False
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.expiry / 3)
            if self._stop.is_set():
                return
            try:
                # bounded: a store that hangs is a store that fails; a renewal still
                # under way is waited for again rather than stacked behind another
                if self._renewing is None or self._renewing.done():
                    self._renewing = asyncio.ensure_future(self._renew())
                    self._renewing.add_done_callback(_retrieved)
                regained = await asyncio.wait_for(asyncio.shield(self._renewing),
                                                  self.expiry / 3)
            except Exception as exc:
                # a timeout has no message: name the exception's type too
                logger.warning("renewing the lease of %s failed: %r", self.node, exc,
                               extra={"action": "lease_renew_failed"})
                if not warned and self.lapsed:
                    warned = True
                    logger.error("the lease of %s lapsed: other nodes may take its "
                                 "sessions over", self.node, extra={"action": "lease_lapsed"})
                continue
            warned = False
            if regained:
                self.lapses += 1
                logger.warning("the lease of %s is held again after a lapse", self.node,
                               extra={"action": "lease_regained"})
                self._start_check()

    def _start_check(self) -> None:
        if self.on_regained is None:
            return
        self._check_again = True  # a check under way may have read before this lapse
        if self._check is None or self._check.done():
            self._check = asyncio.create_task(self._run_checks(self.on_regained),
                                              name=f"lease check {self.node}")

    async def _run_checks(self, check: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(CHECK_RETRY_MIN, self.expiry)
        while self._check_again and not self._stop.is_set():
            self._check_again = False
            try:
                await check()
                backoff.reset()
            except Exception:
                # not given up: a socket this node no longer owns must still be found
                logger.exception("checking the sessions after the lease lapsed; again in "
                                 "%.1f s", backoff.delay)
                self._check_again = True
                await backoff.wait(self._stop)


def _retrieved(renewal: asyncio.Future[bool]) -> None:
    """A renewal that outlived its wait fails unseen (its error was logged when the wait
    gave up): marked retrieved, so asyncio does not report it at exit."""
    if not renewal.cancelled():
        renewal.exception()
