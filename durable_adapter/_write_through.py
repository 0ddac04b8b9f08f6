"""Sessions written through: what a client was told never outruns what the store holds.

A live socket's session is in the store from its CONNECT reply on, and each change to it
(a room entered or left, ``save_session``) is committed before the caller's ``await``
returns and before the next stored packet is delivered to that socket. So a node killed
at any instant after an acknowledgement loses nothing that was acknowledged.

Writes are batched without waiting on purpose: the first change starts a write at once,
and every change made while that write is in flight joins the next one, so a connect
storm or many handlers changing rooms at once cost a few transactions, not one each.

A drop (the session written as disconnected) and a disconnect for good (its session
deleted) go through the same task, after any live write of that socket still queued, so
a late live write never overwrites them. Writes are conditional on this node still
owning the row: a node whose sessions another node took over never writes them back.

Failures are contained: a session that cannot be encoded fails its own socket only, a
batch the store refuses is written again row by row when the store answers at all, and
every wait here is bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from . import metrics
from ._tasks import Backoff, finish_or_cancel
from .exceptions import SessionDataError, StoreError
from .stores.base import Session, Store

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, sid)
RETRY_MIN, RETRY_MAX = 0.5, 10.0  # seconds between attempts while the store fails
#: seconds an awaited write (a CONNECT reply, ``enter_room``, ``save_session``) or a
#: delivery waiting for one gives the store before it goes on without it
WRITE_WAIT = 5.0
CLOSE_GRACE = 1.0  # seconds a closing writer gives the write under way


@dataclass(eq=False)
class _Op:
    """A drop's session to write, or a sid whose sessions to delete, and its caller."""

    done: asyncio.Future[None]
    session: Session | None = None
    deleted: Key | None = None
    keys: set[Key] = field(default_factory=set)


@dataclass(eq=False)
class _Pass:
    """One write of live sessions: the sockets it carries, and what failed for which."""

    done: asyncio.Future[None]
    keys: set[Key] = field(default_factory=set)
    errors: dict[Key, Exception] = field(default_factory=dict)


class SessionWriter:
    """The one writer of a node's sessions.

    :param build: the session of a live socket as of now; None when it has none to
        store (gone, not accepted yet, or no longer this node's).
    :param live: False turns the write-through off: only drops and deletes are written
        (a killed node's sockets then cannot recover).
    """

    def __init__(self, store: Store, node: str,
                 build: Callable[[str, str], Awaitable[Session | None]], *,
                 live: bool = True) -> None:
        self._store = store
        self._node = node
        self._build = build
        self.live = live
        self._dirty: dict[Key, None] = {}
        #: drops whose write failed: tried again with the next writes, or the row would
        #: stay owned by this live node, unrecoverable and never purged
        self._unsaved_drops: dict[Key, Session] = {}
        self._ops: deque[_Op] = deque()
        self._upcoming: _Pass | None = None  # the write the marked sockets wait for
        self._running: _Pass | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._stop = asyncio.Event()
        #: True once a write failed, until one succeeds: waits do not stand in line
        #: behind retries of a store that is down
        self.failing = False

    # -- what changes ----------------------------------------------------------

    def mark(self, namespace: str, sid: str) -> None:
        """``sid``'s session changed: written at once, with whatever else changed."""
        if not self.live or self._closing:
            return
        self._dirty[(namespace, sid)] = None
        self._unsaved_drops.pop((namespace, sid), None)  # a live socket again: superseded
        self._kick()

    def pending(self, key: Key) -> bool:
        """True while a change of ``key`` is not committed yet."""
        return key in self._dirty or (self._running is not None and key in self._running.keys)

    @property
    def busy(self) -> bool:
        return bool(self._dirty) or self._running is not None

    async def committed(self, keys: Iterable[Key], *, within: float = WRITE_WAIT,
                        strict: bool = True) -> None:
        """Return once every change of ``keys`` made so far is committed.

        ``strict``: a failed or timed-out write raises (:class:`StoreError`, or
        :class:`SessionDataError` for a session that cannot be stored); otherwise this
        returns then, the change staying marked for a retry.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        for key in keys:
            while self.pending(key):
                if key in self._dirty:
                    if self._upcoming is None:
                        self._upcoming = _Pass(loop.create_future())
                    write = self._upcoming
                else:
                    assert self._running is not None
                    write = self._running
                self._wake.set()
                try:
                    await asyncio.wait_for(asyncio.shield(write.done),
                                           max(deadline - loop.time(), 0))
                except TimeoutError:
                    if strict:
                        raise StoreError(f"the session of {key[1]} [{key[0]}] was not "
                                         f"written within {within:.0f} s") from None
                    return
                error = write.errors.get(key)
                if error is not None:
                    if strict:
                        raise error
                    return

    async def dropped(self, session: Session) -> None:
        """Write ``session`` as disconnected (owner None), after any pending live write."""
        await self._queue(_Op(asyncio.get_running_loop().create_future(), session=session,
                              keys={(session.namespace, session.sid)}))

    async def deleted(self, namespace: str, sid: str) -> None:
        """Delete every session of ``sid`` (a disconnect for good), after its writes."""
        await self._queue(_Op(asyncio.get_running_loop().create_future(),
                              deleted=(namespace, sid), keys={(namespace, sid)}))

    async def flush(self, within: float = WRITE_WAIT) -> bool:
        """Wait (at most ``within`` seconds) until what was marked or queued so far is written;
        False when the store failed or did not answer in time."""
        try:
            await asyncio.wait_for(self._drained(), within)
        except TimeoutError:
            return False
        return not self.failing

    async def _drained(self) -> None:
        while self._dirty or self._ops or self._unsaved_drops or not self._idle.is_set():
            self._kick()
            await self._idle.wait()
            if self.failing:
                return  # the marks stay for the retry; the caller goes on

    def take_unsaved_drops(self) -> list[Session]:
        """The drops whose write failed so far, handed to the caller (a shutdown's
        final save)."""
        drops = list(self._unsaved_drops.values())
        self._unsaved_drops.clear()
        return drops

    async def close(self) -> None:
        self._closing = True
        self._dirty.clear()
        self._stop.set()
        self._wake.set()
        if self._task is not None:  # flushed before: a write still running is cut short
            await finish_or_cancel(self._task, CLOSE_GRACE)
        if self._upcoming is not None:
            self._end(self._upcoming, StoreError("the session writer was closed"))
        while self._ops:
            op = self._ops.popleft()
            self._settle(op.done, StoreError("the session writer was closed"))

    # -- the task ----------------------------------------------------------------

    async def _queue(self, op: _Op) -> None:
        for key in op.keys:  # superseded: the socket is gone
            self._dirty.pop(key, None)
            self._unsaved_drops.pop(key, None)
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
                if not self._dirty and not self._ops and not self._unsaved_drops:
                    self._idle.set()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self._wake.clear()
                if await self._pass():
                    backoff.reset()
                else:
                    self._idle.set()  # a flush waiting on a failing store goes on
                    # an awaited write (a caller is waiting) tries again at once
                    await backoff.wait(self._wake)
        finally:
            self._idle.set()

    async def _pass(self) -> bool:
        """One transaction for the live sockets marked and the drops queued, then one
        for the deletes queued; False when the store failed (live marks are kept for a
        retry). A socket is dropped or deleted once, after its last live write."""
        dirty, self._dirty = list(self._dirty), {}
        ops, self._ops = list(self._ops), deque()
        running = self._upcoming or _Pass(asyncio.get_running_loop().create_future())
        self._upcoming = None
        running.keys = set(dirty)
        self._running = running
        try:
            return await self._write(running, ops)
        except BaseException as exc:  # cancelled (closing): nobody waits forever
            error = StoreError(f"the session writer stopped: {exc!r}")
            self._end(running, error)
            for op in ops:
                self._settle(op.done, error)
            raise
        finally:
            self._running = None
            self._end(running, None)

    async def _write(self, running: _Pass, ops: list[_Op]) -> bool:
        live: list[Session] = []
        for namespace, sid in running.keys:
            try:
                session = await self._build(namespace, sid)
                if session is not None:
                    self._store.codec.check_session_data(session.data)
                    live.append(session)
            except SessionDataError as exc:  # this socket only: its row stays as it was
                running.errors[(namespace, sid)] = exc
                logger.error("the session of %s [%s] cannot be stored: %s", sid, namespace,
                             exc, extra={"action": "session_unstorable"})
            except Exception:  # its transport went away meanwhile: its drop writes it
                logger.debug("no live session for %s [%s]", sid, namespace, exc_info=True)
        drops: list[tuple[Session, _Op]] = []
        for op in ops:
            if op.session is None:
                continue
            try:
                self._store.codec.check_session_data(op.session.data)
                drops.append((op.session, op))
            except SessionDataError as exc:
                self._settle(op.done, exc)
        retried = list(self._unsaved_drops.values())
        self._unsaved_drops.clear()
        sessions = [*live, *(session for session, _ in drops), *retried]
        failed = await self._save(sessions)
        deleted = [op.deleted for op in ops if op.deleted is not None]
        delete_error: Exception | None = None
        if deleted:
            try:
                await self._store.delete_sessions(deleted)
            except Exception as exc:
                delete_error = exc
        ok = not failed and delete_error is None
        self.failing = not ok
        if not ok:
            metrics.store_error("save_session")
            logger.warning("writing %d sessions failed: %s", len(sessions),
                           next(iter(failed.values())) if failed else delete_error,
                           extra={"action": "session_write_failed"})
        for key, error in failed.items():
            if key in running.keys:
                running.errors[key] = error
                self._dirty.setdefault(key, None)  # kept for the retry
        for session, op in drops:
            unwritten = failed.get((session.namespace, session.sid))
            self._settle(op.done, unwritten)
            if unwritten is not None:
                self._unsaved_drops[(session.namespace, session.sid)] = session
        for session in retried:
            if (session.namespace, session.sid) in failed:
                self._unsaved_drops.setdefault((session.namespace, session.sid), session)
        for op in ops:
            if op.deleted is not None:
                self._settle(op.done, delete_error)
        return ok

    async def _save(self, sessions: list[Session]) -> dict[Key, Exception]:
        """Write ``sessions``; the error of each one not written (none: all committed).

        A refused batch is written again row by row when its first row alone goes
        through (the store answers: one row's content failed it), so one bad row fails
        only its socket; when that first row fails too, the store is down for all."""
        if not sessions:
            return {}
        try:
            await self._store.save_sessions(sessions, node=self._node)
            return {}
        except Exception as exc:
            if len(sessions) == 1:
                return {(sessions[0].namespace, sessions[0].sid): exc}
            error = exc
        failed: dict[Key, Exception] = {}
        for index, session in enumerate(sessions):
            key = (session.namespace, session.sid)
            try:
                await self._store.save_sessions([session], node=self._node)
            except Exception as exc:
                failed[key] = exc
                if index == 0:  # not one row's fault: the store fails as a whole
                    return {(s.namespace, s.sid): error for s in sessions}
        return failed

    def _end(self, write: _Pass, error: Exception | None) -> None:
        """The write is over: its waiters look up their own key's error."""
        if error is not None:
            for key in write.keys:
                write.errors.setdefault(key, error)
        if not write.done.done():
            write.done.set_result(None)

    @staticmethod
    def _settle(future: asyncio.Future[None] | None, error: BaseException | None) -> None:
        if future is None or future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            future.exception()  # retrieved: a pass nobody awaited logs nothing
