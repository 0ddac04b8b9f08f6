"""A node's lease in the store: how other nodes tell a live node from a dead one.

The lease is renewed every third of its expiry. A reconnect whose session is owned by a
node with a valid lease asks that node to let go (:mod:`._cluster`); one owned by a node
whose lease expired (killed, frozen, cut off) is taken over at once. A node that could
not renew for a whole expiry may have had sessions taken meanwhile: once it renews again
it is told through ``on_regained`` to check, and closes the sockets whose sessions now
belong to another node (never two live sockets with one sid). Closing every socket at
the lapse instead would turn a slow store into a reconnect storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from ._tasks import finish_or_cancel
from .stores.base import Store

logger = logging.getLogger(__name__)


class Lease:
    """Keeps ``node``'s lease alive in ``store`` while started."""

    def __init__(self, store: Store, node: str, expiry: float) -> None:
        self.store = store
        self.node = node
        self.expiry = expiry
        #: awaited at the first renewal after one that lapsed (a whole expiry without)
        self.on_regained: Callable[[], Awaitable[None]] | None = None
        self._renewed_at = 0.0  # monotonic time of the last renewal that committed
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take the lease (a failure raises: the node cannot own sessions), then renew."""
        await self._renew()
        self._stop.clear()
        self._task = asyncio.create_task(self._keep(), name=f"lease {self.node}")

    async def stop(self, *, drop: bool) -> None:
        """Stop renewing; with ``drop``, give the lease up (its sessions were saved)."""
        self._stop.set()
        if self._task is not None:
            task, self._task = self._task, None
            await finish_or_cancel(task)
        if drop:
            try:
                await self.store.drop_lease(self.node)
            except Exception:  # it expires by itself
                logger.warning("could not drop the lease of %s", self.node, exc_info=True)

    async def _renew(self) -> None:
        started = time.monotonic()
        await self.store.renew_lease(self.node, now=time.time(), expiry=self.expiry)
        # counted from before the write: the lease may have been seen as of then
        self._renewed_at = started

    async def _keep(self) -> None:
        lapsed = False
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.expiry / 3)
            if self._stop.is_set():
                return
            try:
                # bounded: a store that hangs is a store that fails
                await asyncio.wait_for(asyncio.shield(self._renew()), self.expiry / 3)
            except Exception as exc:
                logger.warning("renewing the lease of %s failed: %s", self.node, exc,
                               extra={"action": "lease_renew_failed"})
                if not lapsed and time.monotonic() - self._renewed_at >= self.expiry:
                    lapsed = True
                    logger.error("the lease of %s lapsed: other nodes may take its "
                                 "sessions over", self.node, extra={"action": "lease_lapsed"})
                continue
            if lapsed:
                lapsed = False
                logger.warning("the lease of %s is held again", self.node,
                               extra={"action": "lease_regained"})
                if self.on_regained is not None:
                    try:
                        await self.on_regained()
                    except Exception:
                        logger.exception("checking the sessions after the lease lapsed")
