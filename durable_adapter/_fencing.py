"""After a lease lapse: which of this node's sockets still own their sessions.

While the lease was lapsed, other nodes could take this node's sessions (a reconnect
elsewhere), and a client may even have dropped from there since (the row released,
owner none). The check reads the owners, in batches, without taking anything: a socket
whose row another node owns, or nobody owns any more, is closed for real and never
saved; one whose row is still this node's stays, and so does one whose row is absent
(its first write had not landed, or write-through is off), which is written now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ._tasks import Backoff
from ._write_through import WRITE_WAIT

if TYPE_CHECKING:
    from .manager import DurableManager

logger = logging.getLogger(__name__)

OWNERS_BATCH = 500  # sessions checked per store call
READ_ATTEMPTS = 5  # tries per batch before the check gives up (the lease retries it)

Key = tuple[str, str]  # (namespace, pid hash)


async def close_disowned(manager: DurableManager,
                         close: Callable[..., Awaitable[None]]) -> None:
    """Close (``close(eio_sid, abort=True)``) each socket of ``manager`` whose session
    now belongs to another node; raises when the store cannot be read."""
    states = [state for state in manager.sockets if state.recoverable]
    for first in range(0, len(states), OWNERS_BATCH):
        batch = states[first:first + OWNERS_BATCH]
        keys = [(state.namespace, state.pid_hash or "") for state in batch]
        owners = await _read_owners(manager, keys)
        for state, key in zip(batch, keys, strict=True):
            if key not in owners:
                manager.sessions.mark(state.namespace, state.sid)
            elif owners[key] != manager.host_id \
                    and manager.sockets.get(state.namespace, state.sid) is state:
                logger.warning("closing %s [%s]: its session moved on while the lease "
                               "lapsed", state.sid, state.namespace,
                               extra={"action": "lease_fenced"})
                state.disowned = True  # nothing to save: not ours any more
                await close(state.eio_sid, abort=True)


async def _read_owners(manager: DurableManager, keys: list[Key]) -> dict[Key, str | None]:
    """The owners of ``keys``, tried again (bounded) while the store fails."""
    backoff = Backoff(0.2, 2.0)
    for attempt in range(READ_ATTEMPTS):
        try:
            return await asyncio.wait_for(manager.store.owners(keys), WRITE_WAIT)
        except Exception as exc:
            if attempt == READ_ATTEMPTS - 1:
                raise
            logger.warning("reading session owners failed (%s); again in %.1f s", exc,
                           backoff.delay)
            await backoff.wait()
    raise AssertionError("unreachable")
