"""``AsyncServer``: python-socketio's server with durable connection state recovery."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import socketio
from socketio import packet as sio_packet

from . import _socketio, metrics
from ._batch import Batcher
from ._codec import copy_value
from ._offsets import hash_pid, is_valid_pid, new_pid
from ._recovery import (
    REPLAY_PAGE,
    Attempt,
    RecoveryFailure,
    RecoveryOptions,
    Restore,
    Takeover,
    check_offset,
    check_window,
    current_attempt,
    next_resume_seq,
    replay_start,
    resume_seq_of,
    split_auth,
)
from ._redact import redact_pids
from ._write_through import SessionWriter
from .exceptions import ConfigurationError, DurableAdapterError
from .manager import DurableManager
from .stores import Store, store_from_url
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
from .stores.memory import MemoryStore

logger = logging.getLogger(__name__)

DEFAULT_STORE_URL = "sqlite+aiosqlite:///durable_adapter.sqlite3"
_DEFAULTS: Mapping[str, Any] = {}  # recovery on, every option at its default
SID_RELEASE_WAIT = 5.0  # seconds a restore waits for the old socket of its sid to go
TAKE_BATCH_MAX = 500  # sessions taken in one store transaction during a reconnect storm

#: set while Engine.IO closes a whole connection: a 'client disconnect' seen then is an
#: Engine.IO CLOSE (the JS client's abrupt close over polling), not a namespace leave
_engineio_close: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "durable_adapter_engineio_close", default=False)


class AsyncServer(socketio.AsyncServer):  # type: ignore[misc]
    """A ``socketio.AsyncServer`` whose clients get their state back after a drop.

    :param store: a store URL (``memory://``, ``sqlite+aiosqlite:///app.db``,
        ``postgresql+asyncpg://...``, ``mongodb://...``, ``redis://...``) or a
        :class:`~durable_adapter.Store`. Default: SQLite file ``durable_adapter.sqlite3``.
    :param connection_state_recovery: a dict of :class:`RecoveryOptions` fields, or
        ``None`` to turn recovery off (the server then behaves as python-socketio's).
    Other arguments are python-socketio's.

    Example::

        sio = durable_adapter.AsyncServer(
            store="sqlite+aiosqlite:///chat.db",
            connection_state_recovery={"max_disconnection_duration": 120},
        )

        @sio.event
        async def connect(sid, environ, auth):
            if not sio.is_recovered(sid):
                await sio.emit("welcome", to=sid)
    """

    def __init__(self, *args: Any, store: str | Store | None = None,
                 connection_state_recovery: Mapping[str, Any] | None = _DEFAULTS,
                 **kwargs: Any) -> None:
        self.recovery: RecoveryOptions | None = None
        if connection_state_recovery is not None:
            self.recovery = RecoveryOptions.from_mapping(connection_state_recovery)
        if self.recovery is not None:
            if kwargs.get("client_manager") is not None:
                raise ConfigurationError(
                    "client_manager cannot be combined with connection state recovery: "
                    "the store is the message queue (pass store= instead)")
            self.store = store if isinstance(store, Store) else store_from_url(
                store or DEFAULT_STORE_URL)
            manager = DurableManager(self.store, recovery_namespaces=self.recovery.namespaces,
                                     lease_expiry=self.recovery.lease_expiry)
            manager.recent.max_bytes = self.recovery.history_cache_bytes
            kwargs["client_manager"] = manager
        super().__init__(*args, **kwargs)
        self._pids: dict[tuple[str, str], str] = {}
        #: (namespace, pid hash) -> sid of the live socket holding that pid
        self._live_pids: dict[tuple[str, str], str] = {}
        self._start_seq: dict[tuple[str, str], int] = {}
        self._resume_seq: dict[tuple[str, str], int] = {}
        self._recovered: set[tuple[str, str]] = set()
        self._failures: dict[tuple[str, str], RecoveryFailure] = {}
        self._evicting: set[str] = set()
        #: (namespace, eio_sid) of connections whose socket a restore is taking over
        self._detached: set[tuple[str, str]] = set()
        self._shut_down = False
        #: the one shutdown run: a second ``shutdown()`` (the app's hook, then the
        #: user's) waits for it instead of starting another
        self._shutdown_run: asyncio.Future[None] | None = None
        #: (namespace, pid hash) of restores under way here: one at a time per session
        #: sockets closed because their session moved to another node: not saved
        self._disowned: set[tuple[str, str]] = set()
        #: set once the restore ends, whatever its outcome
        self._restoring: dict[tuple[str, str], asyncio.Event] = {}
        #: concurrent restores share store calls: one transaction takes many sessions,
        #: one query reads the bounds for every restore waiting for them
        self._takes: Batcher[TakeRequest, TakeResult] = Batcher(
            self._take_batch, batch_max=TAKE_BATCH_MAX, name="taking sessions")
        self._bounds_reads: Batcher[None, HistoryBounds] = Batcher(
            self._read_bounds, batch_max=1_000_000, name="reading the bounds")
        self.sessions: SessionWriter | None = None
        if self.recovery is not None:
            manager = self.durable_manager
            # a memory store dies with the process: its live sessions could serve no
            # other node, and this one finds its own live sockets without them
            self.sessions = SessionWriter(
                self.store, manager.host_id, self._current_session,
                live=self.recovery.write_through and not isinstance(self.store, MemoryStore))
            manager.on_session_change = self._session_changed
            manager.let_go = self._let_go
            manager.lease.on_regained = self._lease_regained
            self._wrap_generate_id()
            redact_pids(self.logger)  # CONNECT packets carry pids: never log them whole
            redact_pids(self.eio.logger)

    # -- public API ------------------------------------------------------------

    @property
    def durable_manager(self) -> DurableManager:
        if self.recovery is None:
            raise DurableAdapterError("connection state recovery is off")
        manager: DurableManager = self.manager
        return manager

    def is_recovered(self, sid: str, namespace: str | None = None) -> bool:
        """True when ``sid`` got its state back on its latest connection."""
        return (namespace or "/", sid) in self._recovered

    def recovery_failure(self, sid: str, namespace: str | None = None) -> RecoveryFailure | None:
        """Why ``sid``'s client asked to recover and got a fresh session, else None."""
        return self._failures.get((namespace or "/", sid))

    async def emit(self, event: str, data: Any = None, to: Any = None, room: Any = None,
                   skip_sid: Any = None, namespace: str | None = None, callback: Any = None,
                   ignore_queue: bool = False, volatile: bool = False) -> None:
        """python-socketio's ``emit``; ``volatile=True`` sends live only: no offset, no replay."""
        if not volatile:
            await super().emit(event, data, to=to, room=room, skip_sid=skip_sid,
                               namespace=namespace, callback=callback,
                               ignore_queue=ignore_queue)
            return
        await self.manager.emit(event, data, namespace or "/", room=to or room,
                                skip_sid=skip_sid, callback=callback, volatile=True)

    async def save_session(self, sid: str, session: Any, namespace: str | None = None
                           ) -> None:
        """python-socketio's ``save_session``; the session is written through to the store."""
        await super().save_session(sid, session, namespace=namespace)
        self._session_changed(namespace or "/", sid)

    async def disconnect(self, sid: str, namespace: str | None = None,
                         ignore_queue: bool = False) -> None:
        """Disconnect ``sid`` for good: its stored session, if any, is deleted too."""
        namespace = namespace or "/"
        await super().disconnect(sid, namespace=namespace, ignore_queue=ignore_queue)
        if self._recovers(namespace):
            await self.durable_manager.start()
            await self._delete_sessions(namespace, sid)
            self._forget(sid, namespace)

    def attach(self, app: Any, socketio_path: str = "socket.io") -> None:
        """python-socketio's ``attach``; on aiohttp it also registers :meth:`shutdown`
        on ``app.on_shutdown``, which aiohttp runs before it waits for open
        connections: the sessions are saved and the websockets closed by then."""
        super().attach(app, socketio_path)
        on_shutdown = getattr(app, "on_shutdown", None)
        if self.async_mode == "aiohttp" and on_shutdown is not None:
            async def save_and_close(_app: Any) -> None:
                await self.shutdown()

            on_shutdown.append(save_and_close)

    async def shutdown(self) -> None:
        """Save every live socket's session (a restart is recoverable), close their
        transports (their clients reconnect elsewhere and recover), then stop.

        Delivery stops first: each socket is saved at exactly what it was sent and is
        sent no stored packet after its save (one more would put its client's offset
        ahead of the saved session, and the recovery would be refused). Idempotent: a
        second call waits for the first to finish.
        """
        if self._shutdown_run is None:
            self._shutdown_run = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._shutdown_run)

    async def _shutdown(self) -> None:
        self._shut_down = True
        if self.recovery is not None:
            manager = self.durable_manager
            await manager.stop_sending()
            sessions = self._session_writer()
            await sessions.flush()  # live writes made so far land before the drops
            saved: list[Session] = []
            for namespace in list(manager.get_namespaces()):
                if not self._recovers(namespace):
                    continue
                for sid, eio_sid in list(manager.get_participants(namespace, None)):
                    if sid in manager.holds.get(namespace, {}):
                        continue  # still replaying: what it was sent is not known here
                    try:
                        session = await self._session_of(eio_sid, sid, namespace)
                    except Exception:  # its transport is gone already: nothing to read
                        logger.exception("could not read the session of %s [%s]", sid,
                                         namespace)
                        continue
                    # saved once: the transport closing later must not save it again
                    self._pids.pop((namespace, sid), None)
                    if session is not None:
                        saved.append(session)
            await sessions.close()
            if saved and manager.started:
                try:
                    await self.store.save_sessions(saved, node=manager.host_id)
                except Exception:
                    logger.exception("could not save %d sessions at shutdown; they will not "
                                     "recover", len(saved))
        await self._close_transports()
        await super().shutdown()
        if self.recovery is not None:
            await self.durable_manager.stop()

    # -- write-through ---------------------------------------------------------

    def _session_writer(self) -> SessionWriter:
        assert self.sessions is not None, "recovery is off"
        return self.sessions

    def _session_changed(self, namespace: str, sid: str) -> None:
        if self.sessions is not None and (namespace, sid) in self._pids \
                and self._recovers(namespace):
            self.sessions.mark(namespace, sid)

    async def _current_session(self, namespace: str, sid: str) -> Session | None:
        """The session of a live socket as the store keeps it while it lives."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        if eio_sid is None or not self.manager.is_connected(sid, namespace) \
                or (namespace, eio_sid) in self._detached:
            return None
        return await self._session_of(eio_sid, sid, namespace, live=True)

    async def _delete_written(self, namespace: str, sid: str) -> None:
        if self.sessions is None or not self.sessions.live:
            return  # nothing was written before the drop
        try:
            await self.sessions.deleted(namespace, sid)
        except Exception:
            logger.exception("could not delete the session of %s [%s]", sid, namespace)

    async def _delete_sessions(self, namespace: str, sid: str) -> None:
        if self.sessions is not None:
            await self.sessions.deleted(namespace, sid)
        else:
            await self.store.delete_sessions(namespace, sid)

    async def _let_go(self, namespace: str, pid_hash: str) -> None:
        """Another node's reconnect asks for this session: close its socket here as a
        drop (its session saved, owner none), so the other node can take it."""
        restoring = self._restoring.get((namespace, pid_hash))
        if restoring is not None:  # taken here a moment ago: let that restore end first
            assert self.recovery is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(restoring.wait(), self.recovery.handover_timeout)
        holder = self._live_holder(namespace, pid_hash)
        if holder is not None:
            await self._evict(holder[1])
        await self._session_writer().flush()

    async def _lease_regained(self) -> None:
        """The lease lapsed for a while: a session whose client reconnected elsewhere
        meanwhile may belong to another node now. Its socket here is closed, unsaved."""
        manager = self.durable_manager
        assert self.recovery is not None
        for (namespace, pid_hash), sid in list(self._live_pids.items()):
            taken = await self.store.take_session(
                namespace, pid_hash, node=manager.host_id, now=time.time(),
                window=self.recovery.max_disconnection_duration)
            if taken is not None and not isinstance(taken, OwnedBy):
                continue  # still this node's
            eio_sid = manager.eio_sid_from_sid(sid, namespace)
            socket = self.eio.sockets.get(eio_sid) if eio_sid else None
            logger.warning("closing %s [%s]: its session moved on while the lease lapsed",
                           sid, namespace, extra={"action": "lease_fenced"})
            self._disowned.add((namespace, sid))  # nothing to save: not ours any more
            if socket is not None:
                with contextlib.suppress(Exception):
                    await socket.close(wait=False, abort=True,
                                       reason=self.reason.TRANSPORT_CLOSE)

    # -- connect ---------------------------------------------------------------

    def _recovers(self, namespace: str) -> bool:
        return self.recovery is not None and self.durable_manager.recovers(namespace)

    def _wrap_generate_id(self) -> None:
        mint = self.eio.generate_id

        def generate_id() -> str:
            # the manager mints the sid inside pre_connect; a restore hands the old one
            attempt = current_attempt.get()
            if attempt is not None and attempt.restore is not None \
                    and not attempt.restore.sid_issued:
                attempt.restore.sid_issued = True
                return attempt.restore.session.sid
            new_id: str = mint()
            return new_id

        self.eio.generate_id = generate_id

    async def _handle_eio_connect(self, eio_sid: str, environ: Any) -> None:
        if self.recovery is not None:
            await self.durable_manager.start()
        await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        if self.recovery is None:
            await super()._handle_connect(eio_sid, namespace, data)
            return
        if not self._connection_open(eio_sid) or (namespace, eio_sid) in self._detached:
            # an evicted connection, or one whose socket a restore is taking: a socket
            # registered for it now would outlive it (nothing would disconnect it)
            return
        auth, pid, offset = split_auth(data)
        if not self._recovers(namespace):
            await super()._handle_connect(eio_sid, namespace, auth)
            return
        attempt = Attempt()
        if (pid is not None or offset is not None) \
                and self.manager.sid_from_eio_sid(eio_sid, namespace) is None:
            # a connection already in the namespace gets python-socketio's refusal, and
            # its CONNECT must not touch anyone's session
            metrics.recovery_started()
            attempt = await self._prepare_restore(eio_sid, namespace, pid, offset)
            metrics.recovery_refused(namespace, attempt.failure)
        token = current_attempt.set(attempt)
        try:
            await super()._handle_connect(eio_sid, namespace, auth)
            await self._complete_restore(eio_sid, namespace, attempt)
        finally:
            current_attempt.reset(token)
            await self._end_attempt(eio_sid, namespace, attempt)

    def _connection_open(self, eio_sid: str) -> bool:
        socket = self.eio.sockets.get(eio_sid)
        return socket is not None and not socket.closing and not socket.closed

    async def _prepare_restore(self, eio_sid: str, namespace: str, pid: object,
                               offset: object) -> Attempt:
        """Claim the session and read its replay, or say why not (contract item 2).

        Whatever goes wrong here ends in a refusal (a fresh session), never in an
        exception reaching python-socketio. What can be checked without the session is
        checked before claiming it, and a transient failure puts it back.
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
        holder = self._live_holder(namespace, pid_hash)
        if holder is not None:
            attempt = await self._take_over(eio_sid, namespace, pid, offset, *holder)
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
        try:
            session = await self._take(namespace, pid_hash)
        except Exception:
            logger.exception("claiming a session failed")
            return self._refuse(RecoveryFailure.STORE_UNAVAILABLE)
        metrics.session_claimed(session)
        if session is None:
            return self._refuse(RecoveryFailure.UNKNOWN_SESSION)
        if not await self._sid_released(session.sid, namespace):
            # its sid is still live here: never two sockets with one sid
            await self._put_back(session)
            return self._refuse(RecoveryFailure.UNKNOWN_SESSION)
        try:
            top = await self._top_for(session)
        except Exception:  # a refusal, never an exception reaching python-socketio
            logger.exception("reading the history's bounds failed")
            await self._put_back(session)
            return self._refuse(RecoveryFailure.STORE_UNAVAILABLE)
        start, failure = replay_start(session, offset, self.store.epoch, top=top)
        if start is None:
            await self._put_back(session)
            return self._refuse(failure or RecoveryFailure.MALFORMED)
        if start < membership_of(session).since:  # which rooms it was in is forgotten
            await self._put_back(session)
            return self._refuse(RecoveryFailure.NOT_RETAINED)
        manager = self.durable_manager
        restore = Restore(pid=pid, session=session,
                          resume_seq=next_resume_seq(session, offset, start),
                          hold=manager.open_hold(namespace, session.sid, eio_sid, session.rooms))
        failure = await self._load_replay(namespace, restore, start)
        if failure is not None:
            manager.close_hold(namespace, session.sid)
            if failure is RecoveryFailure.STORE_UNAVAILABLE:
                await self._put_back(session)
            return self._refuse(failure)
        return Attempt(restore=restore)

    async def _take(self, namespace: str, pid_hash: str) -> Session | None:
        """Take the session of ``pid_hash`` over for this node, if it is recoverable.

        Owned by a live node: that node is asked to close the old socket first (a
        half-open connection there, a client that moved) and the session is taken once
        it let go, or when it does not answer in time (taken for dead). Owned by a node
        whose lease expired (killed): taken at once, as last written.
        """
        manager = self.durable_manager
        old_sid = self._live_pids.get((namespace, pid_hash))
        if old_sid is not None and self._leaving(old_sid, namespace):
            # a fast reconnect: the old socket here is closing and saving this session
            await self._sid_released(old_sid, namespace)
        taken = await self._takes.submit(TakeRequest(namespace, pid_hash))
        if isinstance(taken, OwnedBy):
            assert self.recovery is not None
            await manager.request_handover(taken.node, namespace, pid_hash,
                                           self.recovery.handover_timeout)
            # let go (saved as dropped), or silent past the timeout (taken as dead)
            taken = await self._takes.submit(
                TakeRequest(namespace, pid_hash, force_from=taken.node))
        return None if isinstance(taken, OwnedBy) else taken

    async def _take_batch(self, requests: list[TakeRequest]) -> list[TakeResult]:
        """The takes of concurrent restores, in one store call."""
        assert self.recovery is not None
        return await self.store.take_sessions(
            requests, node=self.durable_manager.host_id, now=time.time(),
            window=self.recovery.max_disconnection_duration)

    async def _read_bounds(self, requests: list[None]) -> list[HistoryBounds]:
        """One read of the bounds for every restore waiting for them."""
        bounds = await self.store.bounds()
        return [bounds] * len(requests)

    async def _bounds(self) -> HistoryBounds:
        """The store's bounds as of a query that started after this call: concurrent
        callers share a query only when it started after each of them asked (a queued
        request waits for the next query, never joins one already running), so a purge
        committed before a caller asked is always in what it gets."""
        return await self._bounds_reads.submit(None)

    async def _top_for(self, session: Session) -> int | None:
        """The last committed seq, which a client's offset cannot be ahead of: needed
        only for a session taken from a live row (its node died before saving it)."""
        if session.expires_at < LIVE_EXPIRY:
            return None
        return (await self._bounds()).top

    def _leaving(self, sid: str, namespace: str) -> bool:
        """True when ``sid`` is gone or its connection is closing (saving its session)."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        return eio_sid is None or not self._connection_open(eio_sid)

    def _live_holder(self, namespace: str, pid_hash: str) -> tuple[str, str] | None:
        """(sid, eio_sid) of the live socket of this pid, if its connection is open."""
        sid = self._live_pids.get((namespace, pid_hash))
        if sid is None or not self.manager.is_connected(sid, namespace):
            return None
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        if eio_sid is None or not self._connection_open(eio_sid):
            return None
        return sid, eio_sid

    async def _take_over(self, eio_sid: str, namespace: str, pid: str, offset: object,
                         sid: str, old_eio: str) -> Attempt:
        """A reconnect can beat the detection of its dead transport (socket.io #4880): the
        old socket is detached, not closed, so a refused restore can give it back; it
        is closed once the restore is accepted. Of two connections presenting one pid,
        the later takes over: the earlier one's client sees its transport close (the
        application's disconnect handler does not run for that sid: it lives on).
        """
        manager = self.durable_manager
        try:
            data = copy_value((await self.eio.get_session(old_eio)).get(namespace, {}))
        except Exception:  # gone meanwhile, or data that could not be stored anyway
            return self._refuse(RecoveryFailure.UNKNOWN_SESSION)
        if self._live_holder(namespace, hash_pid(pid)) != (sid, old_eio):
            return self._refuse(RecoveryFailure.UNKNOWN_SESSION)
        session = self._live_session(sid, namespace, pid, data)
        start, failure = replay_start(session, offset, self.store.epoch)
        if start is None:
            return self._refuse(failure or RecoveryFailure.MALFORMED)
        if start < membership_of(session).since:
            return self._refuse(RecoveryFailure.NOT_RETAINED)
        rooms, last_sent, membership = manager.detach(sid, namespace)
        self._detached.add((namespace, old_eio))
        takeover = Takeover(eio_sid=old_eio, rooms=rooms, last_sent=last_sent,
                            membership=membership, start_seq=session.start_seq,
                            resume_seq=resume_seq_of(session),
                            was_recovered=(namespace, sid) in self._recovered)
        self._recovered.discard((namespace, sid))
        restore = Restore(pid=pid, session=session, takeover=takeover,
                          resume_seq=next_resume_seq(session, offset, start),
                          hold=manager.open_hold(namespace, sid, eio_sid, session.rooms))
        failure = await self._load_replay(namespace, restore, start)
        if failure is not None:
            await self._give_back(namespace, restore, takeover)
            return self._refuse(failure)
        return Attempt(restore=restore)

    async def _load_replay(self, namespace: str, restore: Restore, start: int
                           ) -> RecoveryFailure | None:
        hold = restore.hold
        # this node may lag behind the one the client left: what the client already
        # has (up to ``start``) must not come again from the hold
        hold.upto = max(hold.upto, start)
        cap = self.recovery.max_replay_packets if self.recovery else 0
        try:
            failure = check_window(start, hold.upto, await self._bounds(), cap)
            if failure is None:
                restore.replay = await self._read_replay(namespace, restore.session, start,
                                                         hold.upto)
                # a purge that ran while we read could have left holes: look again. The
                # bounds come from a query that started after the read ended (_bounds),
                # so a purge that committed during the read is seen
                failure = check_window(start, hold.upto, await self._bounds(), cap)
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
                           ) -> list[StoredPacket]:
        """The packets of ``(start, upto]`` that ``session`` is owed, in seq order: from
        this node's recent history when it holds them, else from the store, each page
        read once for all the restores asking for it at once (``_recent``)."""
        membership = membership_of(session)
        packets = await self.durable_manager.recent.replay(
            self.store.read, start, upto, namespace, page=REPLAY_PAGE)
        return [p for p in packets if membership.was_for(p, session.sid)]

    @staticmethod
    def _refuse(failure: RecoveryFailure) -> Attempt:
        logger.info("recovery refused: %s", failure.value, extra={"action": "recovery_refused"})
        return Attempt(failure=failure)

    async def _complete_restore(self, eio_sid: str, namespace: str, attempt: Attempt) -> None:
        """The connect handler accepted: only now close a taken-over socket and replay."""
        restore = attempt.restore
        if restore is None or attempt.sid != restore.session.sid \
                or not self.manager.is_connected(attempt.sid, namespace):
            return
        if restore.takeover is not None:
            self._detached.discard((namespace, restore.takeover.eio_sid))
            await self._evict(restore.takeover.eio_sid)
        await self._send_replay(eio_sid, namespace, restore)

    async def _close_transports(self) -> None:
        """Close every connection as a dropped one (no Engine.IO CLOSE packet: its
        client reconnects). The web server waits for open websockets before it exits;
        these end once closed. Sessions saved above are not saved again."""
        for socket in list(self.eio.sockets.values()):
            try:
                await socket.close(wait=False, abort=True, reason=self.reason.TRANSPORT_CLOSE)
            except Exception:  # one broken connection does not keep the others open
                logger.exception("could not close connection %s at shutdown", socket.sid)
            socket.queue.put_nowait(None)  # ends its writer, which closes the websocket
        self.eio.sockets.clear()

    async def _evict(self, eio_sid: str) -> None:
        """Close a taken-over connection for good: its other namespaces are saved as
        after a drop, and its transport is shut, so nothing it sends later registers."""
        socket = self.eio.sockets.get(eio_sid)
        if socket is None:
            return
        self._evicting.add(eio_sid)
        try:
            await socket.close(wait=False, reason=self.reason.TRANSPORT_CLOSE)
        finally:
            self._evicting.discard(eio_sid)
            self.eio.sockets.pop(eio_sid, None)
            if socket.upgraded:
                socket.queue.put_nowait(None)  # ends its writer, which closes the websocket

    async def _end_attempt(self, eio_sid: str, namespace: str, attempt: Attempt) -> None:
        """Whatever the outcome: a refused CONNECT leaves nothing behind.

        python-socketio disconnects a refused sid through the manager, never through
        ``_handle_disconnect``, so what we keep per sid is freed here.
        """
        sid = attempt.sid
        manager = self.manager
        if sid is not None and not manager.is_connected(sid, namespace) \
                and manager.sid_from_eio_sid(eio_sid, namespace) == sid:
            # the connect handler raised: python-socketio leaves the sid pre-connected
            await manager.disconnect(sid, namespace, ignore_queue=True)
        restore = attempt.restore
        if restore is not None and not restore.completed:
            await self._abandon_restore(eio_sid, namespace, restore)
        if attempt.restoring is not None:
            ended = self._restoring.pop(attempt.restoring, None)
            if ended is not None:
                ended.set()
        if sid is not None and not manager.is_connected(sid, namespace):
            self._forget(sid, namespace)

    async def _abandon_restore(self, eio_sid: str, namespace: str, restore: Restore) -> None:
        """Refused (or failed): the connection keeps no trace of the restore, and the
        session goes back where it came from, for a later try."""
        manager = self.durable_manager
        sid = restore.session.sid
        self._recovered.discard((namespace, sid))
        if manager.is_connected(sid, namespace) \
                and manager.sid_from_eio_sid(eio_sid, namespace) == sid:
            manager.close_hold(namespace, sid)  # accepted, then the replay failed
            return
        if restore.data_restored:
            with contextlib.suppress(KeyError):
                (await self.eio.get_session(eio_sid)).pop(namespace, None)
        if restore.takeover is not None:
            await self._give_back(namespace, restore, restore.takeover)
            return
        manager.close_hold(namespace, sid)
        await self._put_back(restore.session)

    async def _give_back(self, namespace: str, restore: Restore, takeover: Takeover) -> None:
        """Undo a take-over: the old socket gets its rooms back, and what was held for
        it meanwhile; if its connection died meanwhile, its session is stored instead."""
        manager = self.durable_manager
        sid, hold = restore.session.sid, restore.hold
        self._detached.discard((namespace, takeover.eio_sid))
        if not self._connection_open(takeover.eio_sid):
            manager.close_hold(namespace, sid)
            await self._put_back(restore.session)
            return
        held = [seq for seq, _ in hold.held if seq is not None and seq > hold.upto]
        manager.reattach(sid, namespace, takeover.eio_sid, takeover.rooms,
                         max([*held, takeover.last_sent or 0]) or None, takeover.membership)
        self._pids[(namespace, sid)] = restore.pid
        self._live_pids[(namespace, hash_pid(restore.pid))] = sid
        self._start_seq[(namespace, sid)] = takeover.start_seq
        self._resume_seq[(namespace, sid)] = takeover.resume_seq
        if takeover.was_recovered:
            self._recovered.add((namespace, sid))
        hold.eio_sid, hold.registered = takeover.eio_sid, True
        await manager.release_hold(namespace, hold)

    async def _put_back(self, session: Session) -> None:
        """A session taken for a restore that did not happen is left for a later try."""
        if session.expires_at >= LIVE_EXPIRY:
            # taken from a dead node: it expires from now, and as a dropped session its
            # client's offset is judged against its position, which the dead node wrote
            # before sending what followed: what this node delivered is a better floor
            now = time.time()
            duration = self.recovery.max_disconnection_duration if self.recovery else 0.0
            session = dataclasses.replace(
                session, disconnected_at=now, expires_at=now + duration,
                position=max(session.position, self.durable_manager.delivered))
        try:
            await self.store.release_session(session, node=self.durable_manager.host_id)
        except Exception:
            logger.exception("could not put back the session of %s [%s]; it will not recover",
                             session.sid, session.namespace)

    async def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        attempt = current_attempt.get() if event == "connect" else None
        if attempt is not None and self.recovery is not None:
            if attempt.failure is not None and args:
                # visible to the connect handler through recovery_failure(sid)
                self._failures[(namespace, args[0])] = attempt.failure
            restore = attempt.restore
            if restore is not None and args and args[0] == restore.session.sid:
                # only now that the sid is registered on this connection: a CONNECT
                # python-socketio refuses earlier leaves the connection's session alone
                if not restore.data_restored:
                    eio_session = await self.eio.get_session(restore.hold.eio_sid)
                    eio_session[namespace] = copy_value(restore.session.data)
                    restore.data_restored = True
                self._recovered.add((namespace, restore.session.sid))
                if self.recovery.skip_middlewares:
                    return True
        return await super()._trigger_event(event, namespace, *args)

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        if pkt.packet_type != sio_packet.CONNECT or not isinstance(pkt.data, dict) \
                or "sid" not in pkt.data or not self._recovers(pkt.namespace or "/"):
            await super()._send_packet(eio_sid, pkt)
            return
        namespace, sid = pkt.namespace or "/", pkt.data["sid"]
        attempt = current_attempt.get()
        restore = attempt.restore if attempt else None
        if restore is not None and restore.session.sid == sid:
            pid, start_seq = restore.pid, restore.session.start_seq
            resume_seq = restore.resume_seq
        else:
            pid, start_seq = new_pid(), self.durable_manager.delivered
            resume_seq = start_seq
        self._pids[(namespace, sid)] = pid
        self._live_pids[(namespace, hash_pid(pid))] = sid
        self._start_seq[(namespace, sid)] = start_seq
        self._resume_seq[(namespace, sid)] = resume_seq
        pkt.data = {**pkt.data, "pid": pid}
        await super()._send_packet(eio_sid, pkt)
        self._session_changed(namespace, sid)  # in the store from its connect on

    async def _send_replay(self, eio_sid: str, namespace: str, restore: Restore) -> None:
        """Missed packets, then what arrived meanwhile: each once, in order, before live."""
        manager = self.durable_manager
        sid = restore.session.sid
        for stored in restore.replay:
            for part in manager.encode_stored(stored) or ():
                await self._send_eio_packet(eio_sid, part)
            manager.last_sent[(namespace, sid)] = stored.seq
        await manager.release_hold(namespace, restore.hold)
        restore.completed = True
        metrics.recovered(namespace, len(restore.replay))
        logger.info("recovered %s [%s]: %d missed packets", sid, namespace, len(restore.replay),
                    extra={"action": "recovered"})

    # -- disconnect ------------------------------------------------------------

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        token = _engineio_close.set(True)
        try:
            await super()._handle_eio_disconnect(eio_sid, reason)
        finally:
            _engineio_close.reset(token)

    def _is_recoverable(self, eio_sid: str, reason: Any) -> bool:
        unexpected = (self.reason.TRANSPORT_CLOSE, self.reason.TRANSPORT_ERROR,
                      self.reason.PING_TIMEOUT)
        if reason in unexpected or eio_sid in self._evicting:
            return True
        # a client leaving on purpose sends a namespace DISCONNECT first, so a
        # 'client disconnect' reaching a namespace through Engine.IO is an abrupt close
        return reason == self.reason.CLIENT_DISCONNECT and _engineio_close.get()

    async def _handle_disconnect(self, eio_sid: str, namespace: str | None,
                                 reason: Any = None) -> None:
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None and self._recovers(namespace) \
                and self.manager.is_connected(sid, namespace):
            if self._is_recoverable(eio_sid, reason):
                await self._save_session(eio_sid, sid, namespace)
            elif (namespace, sid) in self._pids:
                # left on purpose: what was written through is not recoverable
                await self._delete_written(namespace, sid)
        await super()._handle_disconnect(eio_sid, namespace, reason)
        if sid is not None:
            self._forget(sid, namespace)

    async def _save_session(self, eio_sid: str, sid: str, namespace: str) -> None:
        """Awaited before the socket is forgotten: a fast reconnect finds it stored."""
        pid = self._pids.get((namespace, sid))
        if pid is None or (namespace, sid) in self._disowned:
            return
        try:
            eio_session = await self.eio.get_session(eio_sid)
            session = self._live_session(sid, namespace, pid, eio_session.get(namespace, {}))
            await self._session_writer().dropped(session)
            metrics.session_saved()
        except Exception:  # the disconnect goes on; only the recovery is lost
            metrics.store_error("save_session")
            logger.exception("could not save the session of %s [%s]; it will not recover",
                             sid, namespace)

    def _live_session(self, sid: str, namespace: str, pid: str, data: Any, *,
                      live: bool = False) -> Session:
        """The session of a live socket, as its drop right now would leave it; with
        ``live``, as the store keeps it while it lives (owned by this node)."""
        manager = self.durable_manager
        now = time.time()
        duration = self.recovery.max_disconnection_duration if self.recovery else 0.0
        return Session(
            pid_hash=hash_pid(pid), namespace=namespace, sid=sid,
            rooms=tuple(manager.get_rooms(sid, namespace)), data=data,
            epoch=self.store.epoch, start_seq=self._start_seq.get((namespace, sid), 0),
            # above what this node delivered when restored from a node ahead of it
            position=max(manager.delivered, manager.last_sent.get((namespace, sid), 0)),
            last_sent_seq=manager.last_sent.get((namespace, sid)),
            disconnected_at=now, expires_at=LIVE_EXPIRY if live else now + duration,
            membership=manager.membership(sid, namespace),
            resume_seq=self._resume_seq.get((namespace, sid)),
            owner=manager.host_id if live else None,
        )

    async def _session_of(self, eio_sid: str, sid: str, namespace: str, *,
                          live: bool = False) -> Session | None:
        """What ``sid`` leaves behind as of now (``live``: while it lives); None when it
        holds no pid."""
        pid = self._pids.get((namespace, sid))
        if pid is None:
            return None
        eio_session = await self.eio.get_session(eio_sid)
        return self._live_session(sid, namespace, pid, eio_session.get(namespace, {}),
                                  live=live)

    def _forget(self, sid: str, namespace: str) -> None:
        if self.manager.is_connected(sid, namespace):
            return
        pid = self._pids.pop((namespace, sid), None)
        if pid is not None and self._live_pids.get((namespace, hash_pid(pid))) == sid:
            del self._live_pids[(namespace, hash_pid(pid))]
        self._start_seq.pop((namespace, sid), None)
        self._resume_seq.pop((namespace, sid), None)
        self._recovered.discard((namespace, sid))
        self._failures.pop((namespace, sid), None)
        self._disowned.discard((namespace, sid))


_socketio.check_server_surface()
