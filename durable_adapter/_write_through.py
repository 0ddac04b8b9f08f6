"""Sessions written through: a live socket's session is in the store from its connect on.

Every change (connect, room enter or leave, ``save_session``) marks the socket dirty;
one task writes the dirty sockets' sessions as they are by then, a few milliseconds
later (:data:`COALESCE`), so the changes a socket makes meanwhile are one write, and the
sockets of one pass share one transaction. A drop
(the session marked disconnected) and a disconnect for good (its session deleted) go
through the same task, in order, so a late live write can never overwrite them.

Writes are conditional on this node still owning the row: a node taken for dead, whose
sessions another node took over, never writes them back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from . import metrics
from ._tasks import STOP_TIMEOUT, Backoff, finish_or_cancel
from .stores.base import Session, Store

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, sid)
RETRY_MIN, RETRY_MAX = 0.5, 10.0  # seconds between attempts while the store fails
#: seconds a live change waits for others to join its write: what a node killed in that
#: moment loses, against one write per change (drops and deletes do not wait)
COALESCE = 0.005


@dataclass(eq=False)
class _Op:
    """A drop's session to write, or a sid whose sessions to delete, and its caller."""

    done: asyncio.Future[None]
    session: Session | None = None
    deleted: Key | None = None
    keys: set[Key] = field(default_factory=set)


class SessionWriter:
    """The one writer of a node's sessions.

    :param build: the session of a live socket as of now, None once it is gone.
    :param live: False turns the write-through off: only drops and deletes are written
        (the behaviour before write-through, for comparison in ``bench/``).
    :param coalesce: seconds a live change waits for others before it is written.
    """

    def __init__(self, store: Store, node: str,
                 build: Callable[[str, str], Awaitable[Session | None]], *,
                 live: bool = True, coalesce: float = COALESCE) -> None:
        self._store = store
        self.coalesce = coalesce
        self._node = node
        self._build = build
        self.live = live
        self._dirty: dict[Key, None] = {}
        self._ops: deque[_Op] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._stop = asyncio.Event()

    def mark(self, namespace: str, sid: str) -> None:
        """``sid``'s session changed: written soon, with whatever else changed."""
        if not self.live or self._closing:
            return
        self._dirty[(namespace, sid)] = None
        self._kick()

    async def dropped(self, session: Session) -> None:
        """Write ``session`` as disconnected (owner None), after any pending live write."""
        await self._queue(_Op(asyncio.get_running_loop().create_future(), session=session,
                              keys={(session.namespace, session.sid)}))

    async def deleted(self, namespace: str, sid: str) -> None:
        """Delete every session of ``sid`` (a disconnect for good), after its writes."""
        await self._queue(_Op(asyncio.get_running_loop().create_future(),
                              deleted=(namespace, sid), keys={(namespace, sid)}))

    async def flush(self) -> None:
        """Wait until what was marked or queued so far is written (or failed)."""
        while self._dirty or self._ops or not self._idle.is_set():
            self._kick()
            await self._idle.wait()
            if self._dirty and (self._task is None or self._task.done()):
                return  # the store fails: marks stay for the retry, the caller goes on

    async def close(self) -> None:
        self._closing = True
        self._dirty.clear()
        self._stop.set()
        if self._task is not None:
            self._wake.set()
            await finish_or_cancel(self._task, STOP_TIMEOUT)
        while self._ops:
            op = self._ops.popleft()
            if not op.done.done():
                op.done.set_exception(RuntimeError("the session writer was closed"))

    async def _queue(self, op: _Op) -> None:
        for key in op.keys:  # superseded: the socket is gone
            self._dirty.pop(key, None)
        self._ops.append(op)
        self._kick()
        await op.done

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"session writer {self._node}")

    async def _run(self) -> None:
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        try:
            while not (self._closing and not self._ops):
                if not self._dirty and not self._ops:
                    self._idle.set()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                # a moment for the changes made alongside this one to join it
                await asyncio.sleep(0 if self._ops or self._closing else self.coalesce)
                if await self._pass():
                    backoff.reset()
                else:
                    self._idle.set()  # a flush waiting on a failing store goes on
                    await backoff.wait(self._stop)
        finally:
            self._idle.set()

    async def _pass(self) -> bool:
        """One transaction for the live sockets marked and the drops queued, then one
        for the deletes queued; False when the store failed (live marks are kept for a
        retry). A socket is dropped or deleted once, after its last live write."""
        dirty, self._dirty = list(self._dirty), {}
        ops, self._ops = list(self._ops), deque()
        sessions: list[Session] = []
        for namespace, sid in dirty:
            try:
                session = await self._build(namespace, sid)
            except Exception:  # its transport went away meanwhile: its drop writes it
                logger.debug("no live session for %s [%s]", sid, namespace, exc_info=True)
                session = None
            if session is not None:
                sessions.append(session)
        sessions.extend(op.session for op in ops if op.session is not None)
        deleted = [op.deleted for op in ops if op.deleted is not None]
        try:
            if sessions:
                await self._store.save_sessions(sessions, node=self._node)
            if deleted:
                await self._store.delete_sessions(deleted)
        except Exception as exc:
            metrics.store_error("save_session")
            logger.warning("writing %d sessions failed: %s", len(sessions), exc,
                           extra={"action": "session_write_failed"})
            for key in dirty:
                self._dirty.setdefault(key, None)
            for op in ops:
                if not op.done.done():
                    op.done.set_exception(exc)
            return False
        for op in ops:
            if not op.done.done():
                op.done.set_result(None)
        return True
