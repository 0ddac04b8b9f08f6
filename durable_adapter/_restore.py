"""The restore of a session: take it, read what its client missed, hold live packets
meanwhile, then replay, or give it back exactly as it was.

A CONNECT carrying a pid goes through :meth:`Restorer.prepare` (take the session and read
its replay, or say why not), then python-socketio registers the sid and runs the connect
handler, then :meth:`Restorer.complete` sends the replay and the held packets, and
:meth:`Restorer.end` undoes whatever a refused or failed restore left: a taken-over live
socket is given back, a session taken from the store is put back for a later try.

Hold first, then read, then merge by seq: a packet delivered while the replay is read is
either in the replay or held, never lost, never twice. Whatever goes wrong ends in a
refusal (a fresh session), never in an exception reaching python-socketio.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from . import metrics
from ._attempt import Attempt, Restore, Takeover
from ._batch import Batcher
from ._offsets import hash_pid, is_valid_pid
from ._owed import OwedReader, TooMany
from ._recovery import (
    REPLAY_PAGE,
    RecoveryFailure,
    RecoveryOptions,
    check_offset,
    check_window,
    next_resume_seq,
    replay_start,
    resume_seq_of,
)
from ._sockets import SocketState
from ._write_through import WRITE_WAIT
from .stores.base import (
    LIVE_EXPIRY,
    HistoryBounds,
    OwnedBy,
    Session,
    StoredPacket,
    TakeRequest,
    TakeResult,
)
from .stores.membership import membership_of
from .stores.targets import NAMESPACE, room_target

if TYPE_CHECKING:
    from .manager import DurableManager

logger = logging.getLogger(__name__)

T = TypeVar("T")

SID_RELEASE_WAIT = 5.0  # seconds a restore waits for the old socket of its sid to go
TAKE_BATCH_MAX = 500  # sessions taken in one store transaction during a reconnect storm
#: take (and bounds) calls under way at once: a reconnect arriving while one runs starts
#: its own rather than wait for it (on a busy loop one call lasts many loop rounds)
TAKES_IN_FLIGHT = 4
OWED_BATCH_MAX = 100  # restores whose replays are read by one store call (a round of pages)
#: seconds the asking node waits for a live owner beyond the owner's own waits (a
#: restore under way there, its session writes), so it never gives up first
HANDOVER_MARGIN = 1.0


class Connections(Protocol):
    """What the restore needs of the server's Engine.IO connections."""

    def connection_open(self, eio_sid: str) -> bool: ...

    async def eio_session(self, eio_sid: str) -> dict[str, Any]: ...

    async def evict(self, eio_sid: str) -> None: ...


class Restorer:
    """Restores sessions on this node, one at a time per session."""

    def __init__(self, manager: DurableManager, options: RecoveryOptions,
                 connections: Connections) -> None:
        self.manager = manager
        self.store = manager.store
        self.options = options
        self.connections = connections
        #: (namespace, pid hash) of restores under way here -> set once each ends
        self._restoring: dict[tuple[str, str], asyncio.Event] = {}
        #: (namespace, eio_sid) of connections whose socket a restore is taking over
        self.detached: set[tuple[str, str]] = set()
        # concurrent restores share store calls: one transaction takes many sessions,
        # one query reads the bounds for every restore waiting for them
        self.takes: Batcher[TakeRequest, TakeResult] = Batcher(
            self._take_batch, batch_max=TAKE_BATCH_MAX, name="taking sessions",
            in_flight=TAKES_IN_FLIGHT)
        self._bounds_reads: Batcher[None, HistoryBounds] = Batcher(
            self._read_bounds, batch_max=1_000_000, name="reading the bounds",
            in_flight=TAKES_IN_FLIGHT)
        # replays are read through the store's target index, rounds shared by restores
        self.owed = OwedReader(lambda ranges: self.store.read_targets(ranges),
                               page=REPLAY_PAGE, batch_max=OWED_BATCH_MAX)

    @property
    def pending(self) -> int:
        """Restores under way."""
        return len(self._restoring)

    # -- before python-socketio registers the sid ------------------------------

    async def prepare(self, eio_sid: str, namespace: str, pid: object, offset: object
                      ) -> Attempt:
        """Claim the session and read its replay, or say why not.

        What can be checked without the session is checked before claiming it, and a
        transient failure puts it back.
        """
        if not is_valid_pid(pid):
            return self._refuse(RecoveryFailure.MALFORMED)
        assert isinstance(pid, str)
        failure = check_offset(offset, self.store.epoch)
        if failure is not None:
            return self._refuse(failure)
        pid_hash = hash_pid(pid)
        key = (namespace, pid_hash)
        if key in self._restoring:
            # another connection of this node is restoring it right now: one wins. A
            # take-over counts too: from its detach until the new connection registers
            # the sid, the sid is nowhere, and a restore from the store (this node owns
            # the row) would register it a second time
            return self._refuse(RecoveryFailure.UNKNOWN_SESSION)
        self._restoring[key] = asyncio.Event()
        holder = self.live_holder(namespace, pid_hash)
        if holder is not None:
            attempt = await self._take_over(eio_sid, namespace, pid, offset, holder)
        else:
            attempt = await self._restore_stored(eio_sid, namespace, pid, pid_hash, offset)
        if attempt.restore is None:
            self._restoring.pop(key).set()
        else:
            attempt.restoring = key
        return attempt

    async def _restore_stored(self, eio_sid: str, namespace: str, pid: str, pid_hash: str,
                              offset: object) -> Attempt:
        """Take the stored session of ``pid`` and read its replay, or say why not."""
        # the bounds are read while the session is taken, not after: one round trip of
        # the store instead of two in a row. The query starts after this CONNECT
        # arrived, so no offset its client holds is above its top
        bounds = _background(self.bounds())
        try:
            return await self._restore_taken(eio_sid, namespace, pid, pid_hash, offset,
                                             bounds)
        finally:
            bounds.cancel()  # refused before it was needed: nobody waits for it

    async def _restore_taken(self, eio_sid: str, namespace: str, pid: str, pid_hash: str,
                             offset: object, bounds: asyncio.Future[HistoryBounds]
                             ) -> Attempt:
        try:
            session = await self._take(namespace, pid_hash)
        except Exception:
            logger.exception("claiming a session failed")
            return self._refuse(RecoveryFailure.STORE_UNAVAILABLE)
        metrics.session_claimed(session)
        if session is None:
            return self._refuse(RecoveryFailure.UNKNOWN_SESSION)
        top: int | None = None
        if not await self._sid_released(session.sid, namespace):
            # its sid is still live here: never two sockets with one sid
            await self.put_back(session, top)
            return self._refuse(RecoveryFailure.UNKNOWN_SESSION)
        try:
            if session.expires_at >= LIVE_EXPIRY:
                top = (await bounds).top
        except Exception:  # a refusal, never an exception reaching python-socketio
            logger.exception("reading the history's bounds failed")
            await self.put_back(session, top)
            return self._refuse(RecoveryFailure.STORE_UNAVAILABLE)
        start, failure = replay_start(session, offset, self.store.epoch, top=top)
        if start is None:
            await self.put_back(session, top)
            return self._refuse(failure or RecoveryFailure.MALFORMED)
        if start < membership_of(session).since:  # which rooms it was in is forgotten
            await self.put_back(session, top)
            return self._refuse(RecoveryFailure.NOT_RETAINED)
        manager = self.manager
        restore = Restore(pid=pid, session=session, top=top,
                          resume_seq=next_resume_seq(session, offset, start),
                          hold=manager.open_hold(namespace, session.sid, eio_sid, session.rooms))
        failure = await self._load_replay(namespace, restore, start, bounds)
        if failure is not None:
            manager.close_hold(namespace, session.sid)
            if failure is RecoveryFailure.STORE_UNAVAILABLE:
                await self.put_back(session, top)
            return self._refuse(failure)
        return Attempt(restore=restore)

    async def _take(self, namespace: str, pid_hash: str) -> Session | None:
        """Take the session of ``pid_hash`` over for this node, if it is recoverable.

        Owned by a live node: that node is asked to close the old socket first (a
        half-open connection there, a client that moved) and the session is taken once
        it let go, or when it does not answer in time (taken for dead). Owned by a node
        whose lease expired (killed): taken at once, as last written.
        """
        manager = self.manager
        old = manager.sockets.by_pid(namespace, pid_hash)
        if old is not None and self._leaving(old.sid, namespace):
            # a fast reconnect: the old socket here is closing and saving this session
            await self._sid_released(old.sid, namespace)
        taken = await self.takes.submit(TakeRequest(namespace, pid_hash))
        if isinstance(taken, OwnedBy):
            # the owner spends at most handover_timeout in let_go: wait for longer
            # than that, or a slow owner and this node would both hold the sid
            wait = self.options.handover_timeout + HANDOVER_MARGIN
            await manager.request_handover(taken.node, namespace, pid_hash, wait)
            # let go (saved as dropped), or silent past the timeout (taken as dead)
            taken = await self.takes.submit(
                TakeRequest(namespace, pid_hash, force_from=taken.node))
        return None if isinstance(taken, OwnedBy) else taken

    async def _take_batch(self, requests: list[TakeRequest]) -> list[TakeResult]:
        """The takes of concurrent restores, in one store call."""
        return await self.store.take_sessions(
            requests, node=self.manager.host_id, now=time.time(),
            window=self.options.max_disconnection_duration)

    async def _read_bounds(self, requests: list[None]) -> list[HistoryBounds]:
        """One read of the bounds for every restore waiting for them."""
        bounds = await self.store.bounds()
        return [bounds] * len(requests)

    async def bounds(self) -> HistoryBounds:
        """The store's bounds as of a query that started after this call: concurrent
        callers share a query only when it started after each of them asked (a queued
        request waits for the next query, never joins one already running), so a purge
        committed before a caller asked is always in what it gets."""
        return await self._bounds_reads.submit(None)

    def _leaving(self, sid: str, namespace: str) -> bool:
        """True when ``sid`` is gone or its connection is closing (saving its session)."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        return eio_sid is None or not self.connections.connection_open(eio_sid)

    def live_holder(self, namespace: str, pid_hash: str) -> SocketState | None:
        """The live socket of this pid here, if its connection is open."""
        state = self.manager.sockets.by_pid(namespace, pid_hash)
        if state is None or not self.manager.is_connected(state.sid, namespace) \
                or not self.connections.connection_open(state.eio_sid):
            return None
        return state

    async def _take_over(self, eio_sid: str, namespace: str, pid: str, offset: object,
                         holder: SocketState) -> Attempt:
        """A reconnect can beat the detection of its dead transport (socket.io #4880): the
        old socket is detached, not closed, so a refused restore can give it back; it
        is closed once the restore is accepted. Of two connections presenting one pid,
        the later takes over: the earlier one's client sees its transport close (the
        application's disconnect handler does not run for that sid: it lives on).
        """
        manager = self.manager
        try:
            data = manager.store.codec.copy((await self.connections.eio_session(holder.eio_sid))
                              .get(namespace, {}))
        except Exception:  # gone meanwhile, or data that could not be stored anyway
            return self._refuse(RecoveryFailure.UNKNOWN_SESSION)
        if self.live_holder(namespace, hash_pid(pid)) is not holder:
            return self._refuse(RecoveryFailure.UNKNOWN_SESSION)
        session = holder.session(data, epoch=self.store.epoch, delivered=manager.delivered,
                                 duration=self.options.max_disconnection_duration,
                                 owner=None)
        start, failure = replay_start(session, offset, self.store.epoch)
        if start is None:
            return self._refuse(failure or RecoveryFailure.MALFORMED)
        if start < membership_of(session).since:
            return self._refuse(RecoveryFailure.NOT_RETAINED)
        detached = manager.detach(holder.sid, namespace)
        assert detached is holder
        self.detached.add((namespace, holder.eio_sid))
        restore = Restore(pid=pid, session=session, takeover=Takeover(state=holder),
                          resume_seq=next_resume_seq(session, offset, start),
                          hold=manager.open_hold(namespace, holder.sid, eio_sid,
                                                 session.rooms))
        failure = await self._load_replay(namespace, restore, start)
        if failure is not None:
            await self._give_back(namespace, restore, Takeover(state=holder))
            return self._refuse(failure)
        return Attempt(restore=restore)

    async def _load_replay(self, namespace: str, restore: Restore, start: int,
                           bounds: Awaitable[HistoryBounds] | None = None
                           ) -> RecoveryFailure | None:
        """Read the replay of ``restore`` (``bounds``: read already, since the CONNECT
        arrived), or say why it cannot be had."""
        hold = restore.hold
        # this node may lag behind the one the client left: what the client already
        # has (up to ``start``) must not come again from the hold
        hold.upto = max(hold.upto, start)
        try:
            failure = check_window(start, await (bounds or self.bounds()))
            if failure is None:
                restore.replay, from_store = await self._read_replay(
                    namespace, restore.session, start, hold.upto)
                if from_store:
                    # a purge that ran while we read could have left holes: look again.
                    # The bounds come from a query that started after the read ended, so
                    # a purge that committed during the read is seen. (A replay from
                    # this node's recent history has no holes: nothing to look at.)
                    failure = check_window(start, await self.bounds())
        except TooMany:
            failure = RecoveryFailure.REPLAY_TOO_LARGE
        except Exception:
            logger.exception("reading the replay failed")
            failure = RecoveryFailure.STORE_UNAVAILABLE
        return failure

    async def _sid_released(self, sid: str, namespace: str) -> bool:
        """Wait (briefly) for the old connection of ``sid`` to finish disconnecting.

        Its session is saved before the application's disconnect handler runs, so a fast
        reconnect can claim it while the old socket is still registered.
        """
        deadline = time.monotonic() + SID_RELEASE_WAIT
        while self.manager.eio_sid_from_sid(sid, namespace) is not None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _read_replay(self, namespace: str, session: Session, start: int, upto: int
                           ) -> tuple[list[StoredPacket], bool]:
        """The packets of ``(start, upto]`` that ``session`` is owed, in seq order, found
        by target (the namespace, its sid, the rooms it was in meanwhile): from this
        node's recent history when it holds the range, else from the store's index
        (then the second value is True). More than ``max_replay_packets`` owed raises
        :class:`TooMany`."""
        membership = membership_of(session)
        sid = session.sid
        targets = [NAMESPACE, room_target(sid),
                   *(room_target(room) for room in membership.rooms_during(start, upto))]
        cap = self.options.max_replay_packets

        def owed(packet: StoredPacket) -> bool:
            return membership.was_for(packet, sid)

        kept = self.manager.recent.read_targets(start, upto, namespace, targets)
        if kept is None:
            return await self.owed.read(namespace, targets, after=start, until=upto,
                                        owed=owed, cap=cap), True
        replay = [packet for packet in kept if owed(packet)]
        if len(replay) > cap:
            raise TooMany
        return replay, False

    @staticmethod
    def _refuse(failure: RecoveryFailure) -> Attempt:
        logger.info("recovery refused: %s", failure.value, extra={"action": "recovery_refused"})
        return Attempt(failure=failure)

    # -- once the connect handler accepted --------------------------------------

    async def complete(self, eio_sid: str, namespace: str, attempt: Attempt) -> None:
        """The connect handler accepted: only now close a taken-over socket and replay."""
        restore = attempt.restore
        if restore is None or attempt.sid != restore.session.sid \
                or not self.manager.is_connected(attempt.sid, namespace):
            return
        if restore.takeover is not None:
            self.detached.discard((namespace, restore.takeover.eio_sid))
            await self.connections.evict(restore.takeover.eio_sid)
        await self._send_replay(eio_sid, namespace, restore)

    async def _send_replay(self, eio_sid: str, namespace: str, restore: Restore) -> None:
        """Missed packets, then what arrived meanwhile: each once, in order, before live."""
        manager = self.manager
        sid = restore.session.sid
        state = manager.sockets.get(namespace, sid)
        direct = manager.direct
        write = direct.write if direct is not None and direct.active() else None
        for stored in restore.replay:
            # each packet's frame is encoded once for every socket replaying it, and
            # written straight to the websocket while nothing is queued ahead of it
            frame = manager.replay_frame(stored) if write is not None else None
            if frame is None or not write(eio_sid, *frame):  # type: ignore[misc]
                for part in manager.encode_stored(stored) or ():
                    await manager.server._send_eio_packet(eio_sid, part)
            if state is not None:
                state.last_sent = stored.seq
        await manager.release_hold(namespace, restore.hold)
        restore.completed = True
        metrics.recovered(namespace, len(restore.replay))
        logger.info("recovered %s [%s]: %d missed packets", sid, namespace, len(restore.replay),
                    extra={"action": "recovered"})

    # -- whatever the outcome ----------------------------------------------------

    async def end(self, eio_sid: str, namespace: str, attempt: Attempt) -> None:
        """A refused CONNECT leaves nothing behind.

        python-socketio disconnects a refused sid through the manager, never through
        ``_handle_disconnect``; the registry forgets it there.
        """
        sid = attempt.sid
        manager = self.manager
        if sid is not None and not manager.is_connected(sid, namespace) \
                and manager.sid_from_eio_sid(eio_sid, namespace) == sid:
            # the connect handler raised: python-socketio leaves the sid pre-connected
            await manager.disconnect(sid, namespace, ignore_queue=True)
        restore = attempt.restore
        if restore is not None and not restore.completed:
            await self._abandon(eio_sid, namespace, restore)
        if attempt.restoring is not None:
            ended = self._restoring.pop(attempt.restoring, None)
            if ended is not None:
                ended.set()

    async def _abandon(self, eio_sid: str, namespace: str, restore: Restore) -> None:
        """Refused (or failed): the connection keeps no trace of the restore, and the
        session goes back where it came from, for a later try."""
        manager = self.manager
        sid = restore.session.sid
        if manager.is_connected(sid, namespace) \
                and manager.sid_from_eio_sid(eio_sid, namespace) == sid:
            manager.close_hold(namespace, sid)  # accepted, then the replay failed
            state = manager.sockets.get(namespace, sid)
            if state is not None:
                state.recovered = False
            return
        if restore.data_restored:
            with contextlib.suppress(KeyError):
                (await self.connections.eio_session(eio_sid)).pop(namespace, None)
        if restore.takeover is not None:
            await self._give_back(namespace, restore, restore.takeover)
            return
        manager.close_hold(namespace, sid)
        await self.put_back(restore.session, restore.top)

    async def _give_back(self, namespace: str, restore: Restore, takeover: Takeover) -> None:
        """Undo a take-over: the old socket gets its record and rooms back, and what was
        held for it meanwhile; if its connection died meanwhile, its session is stored
        instead."""
        manager = self.manager
        state, hold = takeover.state, restore.hold
        self.detached.discard((namespace, takeover.eio_sid))
        if not self.connections.connection_open(takeover.eio_sid):
            manager.close_hold(namespace, state.sid)
            await self.put_back(restore.session, restore.top)
            return
        held = [seq for seq, _ in hold.held if seq is not None and seq > hold.upto]
        manager.reattach(state, max(held) if held else None)
        hold.eio_sid, hold.registered = takeover.eio_sid, True
        await manager.release_hold(namespace, hold)

    async def put_back(self, session: Session, top: int | None) -> None:
        """A session taken for a restore that did not happen is left for a later try,
        with every packet its client is owed still owed.

        One taken from a dead node's live row says what was sent only as of its last
        write, so the client's offset is trusted up to the top (:func:`replay_start`).
        Put back as a dropped session, it keeps that trust: its last sent seq becomes
        ``top`` (no client is ahead of it; this node's delivered seq when the top could
        not be read: a client ahead of that is refused, never short-changed), and a
        client without an offset resumes where the live row said it would.
        """
        if session.expires_at >= LIVE_EXPIRY:
            now = time.time()
            ceiling = max(top if top is not None else 0, self.manager.delivered,
                          session.position, session.last_sent_seq or 0)
            resume = resume_seq_of(session) if session.last_sent_seq is not None \
                else session.position
            session = dataclasses.replace(
                session, disconnected_at=now,
                expires_at=now + self.options.max_disconnection_duration,
                position=ceiling, last_sent_seq=ceiling, resume_seq=resume)
        try:
            await asyncio.wait_for(
                self.store.release_session(session, node=self.manager.host_id), WRITE_WAIT)
        except Exception:
            logger.exception("could not put back the session of %s [%s]; it will not recover",
                             session.sid, session.namespace)

    # -- another node's reconnect asks for a session of this node ----------------

    async def let_go(self, namespace: str, pid_hash: str) -> None:
        """Close this node's socket of the session as a drop (its session saved, owner
        none), so the other node can take it; within ``handover_timeout`` in all (the
        asking node waits a little longer than that)."""
        budget = self.options.handover_timeout / 2
        restoring = self._restoring.get((namespace, pid_hash))
        if restoring is not None:  # taken here a moment ago: let that restore end first
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(restoring.wait(), budget)
        holder = self.live_holder(namespace, pid_hash)
        if holder is not None:
            await self.connections.evict(holder.eio_sid)
        await self.manager.sessions.flush(budget)


def _background(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """``coroutine`` under way in a task whose outcome may go unread (cancelled, or
    failed while its reader was refused for another reason): never logged as lost."""
    task = asyncio.ensure_future(coroutine)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task
