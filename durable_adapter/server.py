"""``AsyncServer``: python-socketio's server with durable connection state recovery.

The server keeps python-socketio's hooks and the public API. What it keeps per socket is
one :class:`~._sockets.SocketState` in the manager's registry; the restore of a session is
the :class:`~._restore.Restorer`'s; the writes of sessions are the
:class:`~._write_through.SessionWriter`'s.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Mapping
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from . import _socketio, metrics, readiness
from ._attempt import Attempt, current_attempt
from ._direct import DirectWrites
from ._fencing import close_disowned
from ._offsets import new_pid
from ._recovery import RecoveryFailure, RecoveryOptions, split_auth
from ._redact import redact_pids
from ._restore import Restorer
from ._sockets import SocketState
from .exceptions import ConfigurationError, DurableAdapterError, StartupError
from .manager import DurableManager
from .stores import Store, store_from_url
from .stores.base import Session

logger = logging.getLogger(__name__)

DEFAULT_STORE_URL = "sqlite+aiosqlite:///durable_adapter.sqlite3"
_DEFAULTS: Mapping[str, Any] = {}  # recovery on, every option at its default
#: what ``connection_state_recovery=`` accepts (:meth:`RecoveryOptions.from_value`)
RecoveryOption = RecoveryOptions | Mapping[str, Any] | bool | None
#: seconds a shutdown gives the store for the final save (an outage must not keep the
#: process from exiting: its sockets then recover from their written-through rows)
SHUTDOWN_SAVE_WAIT = 2.0
#: exit status of an aiohttp app whose store cannot be used at start-up (uvicorn's, and
#: gunicorn's "worker failed to boot")
STARTUP_FAILURE_STATUS = 3

#: set while Engine.IO closes a whole connection: a 'client disconnect' seen then is an
#: Engine.IO CLOSE (the JS client's abrupt close over polling), not a namespace leave
_engineio_close: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "durable_adapter_engineio_close", default=False)


class AsyncServer(socketio.AsyncServer):  # type: ignore[misc]
    """A ``socketio.AsyncServer`` whose clients get their state back after a drop.

    :param store: a store URL (``memory://``, ``sqlite+aiosqlite:///app.db``,
        ``postgresql+asyncpg://...``, ``mongodb://...``, ``redis://...``) or a
        :class:`~durable_adapter.Store`. Default: SQLite file ``durable_adapter.sqlite3``.
    :param connection_state_recovery: a :class:`RecoveryOptions`, a dict of its fields,
        or ``True`` (every default); ``None`` or ``False`` turns recovery off (the server
        then behaves as python-socketio's).
    Other arguments are python-socketio's. ``json=`` (python-socketio's alternative JSON
    module) also encodes what the store keeps: a payload it can send is stored and
    replayed as it was sent live, and session data may hold what it encodes (recovered
    as its ``loads`` returns it: a ``datetime`` made text comes back as that text).

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
                 connection_state_recovery: RecoveryOption = _DEFAULTS,
                 **kwargs: Any) -> None:
        """
        :param store: a store URL or a :class:`~durable_adapter.Store` (see above).
        :param connection_state_recovery: a :class:`RecoveryOptions`, a dict of its
            fields or ``True``; ``None`` or ``False`` for python-socketio's behaviour.
        :param args: python-socketio's.
        :param kwargs: python-socketio's; ``client_manager`` cannot be combined with
            recovery (the store is the message queue).
        """
        self.recovery = RecoveryOptions.from_value(connection_state_recovery)
        if self.recovery is not None:
            if kwargs.get("client_manager") is not None:
                raise ConfigurationError(
                    "client_manager cannot be combined with connection state recovery: "
                    "the store is the message queue (pass store= instead)")
            self.store = store if isinstance(store, Store) else store_from_url(
                store or DEFAULT_STORE_URL)
            manager = DurableManager(
                self.store, recovery_namespaces=self.recovery.namespaces,
                lease_expiry=self.recovery.lease_expiry,
                build_session=self._current_session, let_go=self._let_go,
                on_lease_regained=self._check_ownership,
                # a memory store dies with the process: its live sessions could serve
                # no other node, and this one finds its own live sockets without them
                write_through=self.recovery.write_through and self.store.shared,
                max_disconnection_duration=self.recovery.max_disconnection_duration,
                # nothing outside this process can purge its memory
                purge_window=self.recovery.max_disconnection_duration
                if self.recovery.cleanup_in_server or not self.store.shared else None)
            manager.recent.max_bytes = self.recovery.history_cache_bytes
            kwargs["client_manager"] = manager
        super().__init__(*args, **kwargs)
        self._evicting: set[str] = set()
        #: the one shutdown run: a second ``shutdown()`` (the app's hook, then the
        #: user's) waits for it instead of starting another
        self._shutdown_run: asyncio.Future[None] | None = None
        self._restorer: Restorer | None = None
        if self.recovery is not None:
            self._restorer = Restorer(self.durable_manager, self.recovery, self)
            self.durable_manager.direct = DirectWrites(self.eio)
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
        """True when ``sid`` got its state back on its latest connection.

        :param sid: the socket's sid.
        :param namespace: its namespace (default ``/``).
        """
        state = self._state(namespace or "/", sid)
        return state is not None and state.recovered

    def recovery_failure(self, sid: str, namespace: str | None = None) -> RecoveryFailure | None:
        """Why ``sid``'s client asked to recover and got a fresh session, else None.

        :param sid: the socket's sid.
        :param namespace: its namespace (default ``/``).
        """
        state = self._state(namespace or "/", sid)
        return None if state is None else state.failure

    async def emit(self, event: str, data: Any = None, to: Any = None, room: Any = None,
                   skip_sid: Any = None, namespace: str | None = None, callback: Any = None,
                   ignore_queue: bool = False, volatile: bool = False) -> None:
        """python-socketio's ``emit``: stored, then sent with its offset.

        Returns once the packet is committed and handed to this node's sockets.

        :param volatile: True sends it live only: no offset, no replay.
        Every other parameter is python-socketio's.
        """
        if not volatile:
            await super().emit(event, data, to=to, room=room, skip_sid=skip_sid,
                               namespace=namespace, callback=callback,
                               ignore_queue=ignore_queue)
            return
        await self.manager.emit(event, data, namespace or "/", room=to or room,
                                skip_sid=skip_sid, callback=callback, volatile=True)

    async def save_session(self, sid: str, session: Any, namespace: str | None = None
                           ) -> None:
        """python-socketio's ``save_session``; returns once the session is committed.

        :raises SessionDataError: the session holds something the store cannot keep
            (what the server's JSON module encodes, and bytes); nothing is saved then.
        """
        namespace = namespace or "/"
        if self._recovers(namespace):
            # refused here: it would fail at every write
            self.store.codec.check_session_data(session)
        await super().save_session(sid, session, namespace=namespace)
        if self._recovers(namespace):
            self.durable_manager.sessions.mark(namespace, sid)
            await self.durable_manager.session_committed(namespace, sid)

    async def disconnect(self, sid: str, namespace: str | None = None,
                         ignore_queue: bool = False) -> None:
        """Disconnect ``sid`` for good: its stored session, if any, is deleted too.

        :param sid: the socket's sid (on this node or another).
        :param namespace: its namespace (default ``/``).
        :param ignore_queue: python-socketio's.
        """
        namespace = namespace or "/"
        recovers = self._recovers(namespace)
        if recovers:
            # deleted before the client is told: a reconnect right after the DISCONNECT
            # packet must not find the session (on this node or another)
            await self.durable_manager.start()
            await self.durable_manager.sessions.deleted(namespace, sid)
        await super().disconnect(sid, namespace=namespace, ignore_queue=ignore_queue)
        if recovers:
            # again: a room change made while the first delete ran wrote the row back
            await self.durable_manager.sessions.deleted(namespace, sid)

    async def open_store(self) -> None:
        """Open the store, check its tables, start following it: at start-up, instead
        of at the first connection. Idempotent; nothing to do with recovery off.

        ``sio.attach(app)`` on aiohttp and :class:`durable_adapter.ASGIApp` call it at
        start-up; await it yourself when your app is served otherwise.

        :raises StartupError: the store cannot be reached, or its tables are missing or
            at another version; the message is one line naming the fix.
        """
        if self.recovery is not None:
            await readiness.open_at_startup(self.durable_manager)

    async def ready(self) -> readiness.Readiness:
        """A readiness answer (true or false, and why in one line): the store is open
        (opened now if no start-up hook did), answers, and this node's lease holds;
        false once a shutdown began. Always ready with recovery off.

        Usage::

            app.router.add_get("/ready", durable_adapter.readiness.aiohttp_handler(sio))
        """
        if self.recovery is None:
            return readiness.Readiness(True, "ready: recovery is off")
        return await readiness.probe(self.durable_manager)

    def attach(self, app: Any, socketio_path: str = "socket.io") -> None:
        """python-socketio's ``attach``. On aiohttp it also registers :meth:`open_store`
        on ``app.on_startup`` (a store that cannot be used ends the process: one line
        on the log, exit status 3) and :meth:`shutdown` on ``app.on_shutdown``, which
        aiohttp runs before it waits for open connections: the sessions are saved and
        the websockets closed by then.

        :param app: the web application.
        :param socketio_path: python-socketio's.
        """
        super().attach(app, socketio_path)
        on_startup = getattr(app, "on_startup", None)
        on_shutdown = getattr(app, "on_shutdown", None)
        if self.async_mode != "aiohttp" or on_startup is None or on_shutdown is None:
            return

        async def open_or_exit(_app: Any) -> None:
            try:
                await self.open_store()
            except StartupError as exc:
                # SystemExit: aiohttp's run_app lets it end the process without a
                # traceback (any other exception prints one). Status 3 as uvicorn's
                # start-up failure: gunicorn then stops, not respawning the worker
                logger.error("%s", exc)
                raise SystemExit(STARTUP_FAILURE_STATUS) from None

        async def save_and_close(_app: Any) -> None:
            await self.shutdown()

        on_startup.append(open_or_exit)
        on_shutdown.append(save_and_close)

    async def shutdown(self) -> None:
        """Save every live socket's session (a restart is recoverable), close their
        transports (their clients reconnect elsewhere and recover), then stop.

        Delivery stops first: each socket is saved at exactly what it was sent and is
        sent no stored packet after its save (one more would put its client's offset
        ahead of the saved session, and the recovery would be refused). Every wait on
        the store is bounded: under an outage it ends within seconds, the sockets
        closed as drops, the lease left to expire (their written-through rows then
        recover on another node). Idempotent: a second call waits for the first.
        """
        if self._shutdown_run is None:
            self._shutdown_run = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._shutdown_run)

    async def _shutdown(self) -> None:
        saved = False
        if self.recovery is not None:
            saved = await self._save_all()
        await self._close_transports()
        await super().shutdown()
        if self.recovery is not None:
            await self.durable_manager.stop(drop_lease=saved)

    async def _save_all(self) -> bool:
        """Save every live socket as dropped; True once that committed (bounded)."""
        manager = self.durable_manager
        await manager.stop_sending()
        sessions = manager.sessions
        await sessions.flush(SHUTDOWN_SAVE_WAIT)  # live writes made so far land first
        drops: list[Session] = []
        for state in manager.sockets:
            if state.sid in manager.holds.get(state.namespace, {}) or not state.recoverable:
                continue  # still replaying (what it was sent is not known), or nothing
            try:
                drops.append(await self._session_of(state.namespace, state.sid, live=False))
            except Exception:  # its transport is gone already: nothing to read
                logger.exception("could not read the session of %s [%s]", state.sid,
                                 state.namespace)
            state.accepted = False  # saved once: its transport closing must not again
        await sessions.close()
        drops.extend(sessions.take_unsaved_drops())
        if not drops or not manager.started:
            return True
        try:
            await asyncio.wait_for(manager.store.save_sessions(drops, node=manager.host_id),
                                   SHUTDOWN_SAVE_WAIT)
            return True
        except Exception:
            logger.exception("could not save %d sessions at shutdown; they recover from "
                             "their written-through state once the lease expires",
                             len(drops))
            return False

    # -- the sessions of live sockets -----------------------------------------

    def _state(self, namespace: str, sid: str) -> SocketState | None:
        if self.recovery is None:
            return None
        return self.durable_manager.sockets.get(namespace, sid)

    async def _current_session(self, namespace: str, sid: str) -> Session | None:
        """The session of a live socket as the store keeps it while it lives."""
        state = self._state(namespace, sid)
        # registered (pre-connected included: its CONNECT reply waits for this write)
        if state is None or not state.recoverable \
                or (namespace, state.eio_sid) in self._restorer_().detached:
            return None
        return await self._session_of(namespace, sid, live=True)

    async def _session_of(self, namespace: str, sid: str, *, live: bool) -> Session:
        """What ``sid`` leaves behind as of now (``live``: while it lives)."""
        manager = self.durable_manager
        state = manager.sockets.get(namespace, sid)
        assert state is not None and self.recovery is not None
        eio_session = await self.eio.get_session(state.eio_sid)
        return state.session(eio_session.get(namespace, {}), epoch=self.store.epoch,
                             delivered=manager.delivered,
                             duration=self.recovery.max_disconnection_duration,
                             owner=manager.host_id if live else None)

    def _restorer_(self) -> Restorer:
        assert self._restorer is not None, "recovery is off"
        return self._restorer

    async def _let_go(self, namespace: str, pid_hash: str) -> None:
        await self._restorer_().let_go(namespace, pid_hash)

    async def _check_ownership(self) -> None:
        """The lease lapsed for a while: close the sockets whose sessions moved on."""
        await close_disowned(self.durable_manager, self.evict)

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
        if self._restorer is None:
            await super()._handle_connect(eio_sid, namespace, data)
            return
        if not self.connection_open(eio_sid) or (namespace, eio_sid) in self._restorer.detached:
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
            attempt = await self._restorer.prepare(eio_sid, namespace, pid, offset)
            metrics.recovery_refused(namespace, attempt.failure)
        token = current_attempt.set(attempt)
        try:
            await super()._handle_connect(eio_sid, namespace, auth)
            await self._restorer.complete(eio_sid, namespace, attempt)
        finally:
            current_attempt.reset(token)
            await self._restorer.end(eio_sid, namespace, attempt)

    async def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        attempt = current_attempt.get() if event == "connect" else None
        if attempt is None or self.recovery is None or not args:
            return await super()._trigger_event(event, namespace, *args)
        state = self._state(namespace, args[0])
        if state is not None and attempt.failure is not None:
            state.failure = attempt.failure  # visible to the connect handler
        restore = attempt.restore
        accepted: Any = True
        if restore is not None and args[0] == restore.session.sid:
            # only now that the sid is registered on this connection: a CONNECT
            # python-socketio refuses earlier leaves the connection's session alone
            if not restore.data_restored:
                eio_session = await self.eio.get_session(restore.hold.eio_sid)
                eio_session[namespace] = self.store.codec.copy(restore.session.data)
                restore.data_restored = True
        if restore is None or args[0] != restore.session.sid \
                or not self.recovery.skip_middlewares:
            accepted = await super()._trigger_event(event, namespace, *args)
        if accepted is not False and state is not None:
            # nothing of a socket its handler has not accepted may be takeable; with
            # always_connect its CONNECT reply went out already: it is written now
            state.accepted = True
            if self.always_connect and state.pid is not None:
                await self._write_connected(state)
        return accepted

    async def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        # every packet python-socketio sends (CONNECT replies, acks, replays) goes
        # straight to the websocket when nothing is ahead of it there (._direct)
        direct = self.durable_manager.direct if self.recovery is not None else None
        # (never a binary one: its encoding is cached, and polling needs it in base64)
        if direct is not None and not eio_pkt.binary and direct.active():
            frame = eio_pkt.encode()
            if isinstance(frame, str) and direct.write(eio_sid, frame, frame.encode()):
                return
        await super()._send_eio_packet(eio_sid, eio_pkt)

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        if pkt.packet_type != sio_packet.CONNECT or not isinstance(pkt.data, dict) \
                or "sid" not in pkt.data or not self._recovers(pkt.namespace or "/"):
            await super()._send_packet(eio_sid, pkt)
            return
        namespace, sid = pkt.namespace or "/", pkt.data["sid"]
        manager = self.durable_manager
        state = manager.sockets.get(namespace, sid)
        if state is None:  # pragma: no cover - python-socketio registers it first
            await super()._send_packet(eio_sid, pkt)
            return
        attempt = current_attempt.get()
        restore = attempt.restore if attempt else None
        if restore is not None and restore.session.sid == sid:
            pid = restore.pid
        else:
            pid = new_pid()
            state.start_seq = state.resume_seq = manager.delivered
        manager.sockets.set_pid(state, pid)
        if state.accepted:
            # its row commits before its client holds the pid that names it
            await self._write_connected(state)
        pkt.data = {**pkt.data, "pid": pid}
        # straight to the websocket where nothing is ahead of it there: the replay that
        # follows can then go the same way (behind a queued reply it would be queued too)
        direct = manager.direct
        if direct is not None and direct.active():
            encoded = pkt.encode()
            found = manager.direct_frame([eio_packet.Packet(eio_packet.MESSAGE, encoded)]) \
                if isinstance(encoded, str) else None
            if found is not None:
                write, frame, data = found
                if not write(eio_sid, frame, data):
                    await self.eio.send(eio_sid, encoded)
                return
        await super()._send_packet(eio_sid, pkt)

    async def _write_connected(self, state: SocketState) -> None:
        manager = self.durable_manager
        manager.sessions.mark(state.namespace, state.sid)
        try:
            await manager.session_committed(state.namespace, state.sid)
        except Exception as exc:  # it still connects: its drop, if any, is saved
            logger.warning("the session of %s [%s] is not stored yet: %s", state.sid,
                           state.namespace, exc, extra={"action": "session_write_failed"})

    # -- the server's Engine.IO connections (the restore's ports) --------------

    def connection_open(self, eio_sid: str) -> bool:
        socket = self.eio.sockets.get(eio_sid)
        return socket is not None and not socket.closing and not socket.closed

    async def eio_session(self, eio_sid: str) -> dict[str, Any]:
        session: dict[str, Any] = await self.eio.get_session(eio_sid)
        return session

    async def evict(self, eio_sid: str, *, abort: bool = False) -> None:
        """Close a connection for good: its namespaces are saved as after a drop (unless
        disowned), and its transport is shut, so nothing it sends later registers.

        :param abort: close without an Engine.IO CLOSE packet (its client reconnects).
        """
        socket = self.eio.sockets.get(eio_sid)
        if socket is None:
            return
        self._evicting.add(eio_sid)
        try:
            await socket.close(wait=False, abort=abort, reason=self.reason.TRANSPORT_CLOSE)
        finally:
            self._evicting.discard(eio_sid)
            self.eio.sockets.pop(eio_sid, None)
            socket.queue.put_nowait(None)  # ends its writer, which closes the websocket

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
        state = self._state(namespace, sid) if sid is not None else None
        if state is not None and self.manager.is_connected(sid, namespace) \
                and self._recovers(namespace) and state.recoverable:
            if self._is_recoverable(eio_sid, reason):
                await self._save_dropped(state)
            else:
                # left on purpose: not recoverable. Deleted on every store, written
                # through or not: a recovered socket's row is owned by this live node
                # and would otherwise never expire
                await self._delete_written(namespace, state.sid)
        await super()._handle_disconnect(eio_sid, namespace, reason)

    async def _save_dropped(self, state: SocketState) -> None:
        """Awaited before the socket is forgotten: a fast reconnect finds it stored."""
        try:
            session = await self._session_of(state.namespace, state.sid, live=False)
            await self.durable_manager.sessions.dropped(session)
            metrics.session_saved()
        except Exception:  # the disconnect goes on; only the recovery is lost
            metrics.store_error("save_session")
            logger.exception("could not save the session of %s [%s]; it will not recover",
                             state.sid, state.namespace)

    async def _delete_written(self, namespace: str, sid: str) -> None:
        try:
            await self.durable_manager.sessions.deleted(namespace, sid)
        except Exception:
            logger.exception("could not delete the session of %s [%s]", sid, namespace)


_socketio.check_server_surface()
