"""``AsyncServer``: python-socketio's server with durable connection state recovery."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Mapping
from typing import Any

import socketio
from socketio import packet as sio_packet

from . import _socketio
from ._membership import membership_of
from ._offsets import format_offset, hash_pid, is_valid_pid, new_pid
from ._recovery import (
    REPLAY_PAGE,
    Attempt,
    RecoveryFailure,
    RecoveryOptions,
    Restore,
    check_window,
    current_attempt,
    replay_start,
    split_auth,
)
from ._redact import redact_pids
from .exceptions import ConfigurationError, DurableAdapterError
from .manager import DurableManager
from .stores import Store, store_from_url
from .stores.base import Session, StoredPacket

logger = logging.getLogger(__name__)

DEFAULT_STORE_URL = "sqlite+aiosqlite:///durable_adapter.sqlite3"
_DEFAULTS: Mapping[str, Any] = {}  # recovery on, every option at its default
SID_RELEASE_WAIT = 5.0  # seconds a restore waits for the old socket of its sid to go

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
            kwargs["client_manager"] = DurableManager(
                self.store, recovery_namespaces=self.recovery.namespaces)
        super().__init__(*args, **kwargs)
        self._pids: dict[tuple[str, str], str] = {}
        #: (namespace, pid hash) -> sid of the live socket holding that pid
        self._live_pids: dict[tuple[str, str], str] = {}
        self._start_seq: dict[tuple[str, str], int] = {}
        self._recovered: set[tuple[str, str]] = set()
        self._failures: dict[tuple[str, str], RecoveryFailure] = {}
        self._evicting: set[str] = set()
        if self.recovery is not None:
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

    async def disconnect(self, sid: str, namespace: str | None = None,
                         ignore_queue: bool = False) -> None:
        """Disconnect ``sid`` for good: its stored session, if any, is deleted too."""
        namespace = namespace or "/"
        await super().disconnect(sid, namespace=namespace, ignore_queue=ignore_queue)
        if self._recovers(namespace):
            await self.durable_manager.start()
            await self.store.delete_sessions(namespace, sid)
            self._forget(sid, namespace)

    async def shutdown(self) -> None:
        """Save every live socket's session (a restart is recoverable), then stop."""
        if self.recovery is not None:
            for namespace in list(self.manager.get_namespaces()):
                if not self._recovers(namespace):
                    continue
                for sid, eio_sid in list(self.manager.get_participants(namespace, None)):
                    await self._save_session(eio_sid, sid, namespace)
                    # saved once: the transport closing later must not save it again
                    self._pids.pop((namespace, sid), None)
        await super().shutdown()
        if self.recovery is not None:
            await self.durable_manager.stop()

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
        if not self._recovers(namespace):
            await super()._handle_connect(eio_sid, namespace, data)
            return
        auth, pid, offset = split_auth(data)
        attempt = None
        if pid is not None or offset is not None:
            attempt = await self._prepare_restore(eio_sid, namespace, pid, offset)
        token = current_attempt.set(attempt)
        restore = attempt.restore if attempt else None
        try:
            if restore is not None:
                session = await self.eio.get_session(eio_sid)
                session[namespace] = restore.session.data
                self._recovered.add((namespace, restore.session.sid))
            await super()._handle_connect(eio_sid, namespace, auth)
        finally:
            current_attempt.reset(token)
            if restore is not None and not restore.completed:
                await self._abandon_restore(namespace, restore)

    async def _prepare_restore(self, eio_sid: str, namespace: str, pid: object,
                               offset: object) -> Attempt:
        """Claim the session and read its replay, or say why not (contract item 2).

        Whatever goes wrong here ends in a refusal (a fresh session), never in an
        exception reaching python-socketio.
        """
        if not is_valid_pid(pid) or (offset is not None and not isinstance(offset, str)):
            return self._refuse(RecoveryFailure.MALFORMED)
        assert isinstance(pid, str)
        pid_hash = hash_pid(pid)
        try:
            await self._evict_live_socket(namespace, pid_hash, eio_sid)
            session = await self.store.claim_session(namespace, pid_hash, time.time())
            old_sid = self._live_pids.get((namespace, pid_hash))
            if session is None and old_sid is not None \
                    and self.manager.eio_sid_from_sid(old_sid, namespace) != eio_sid \
                    and await self._sid_released(old_sid, namespace):
                # its old socket was still saving the session as we looked: look again
                session = await self.store.claim_session(namespace, pid_hash, time.time())
        except Exception:
            logger.exception("claiming a session failed")
            return self._refuse(RecoveryFailure.STORE_UNAVAILABLE)
        if session is None:
            return self._refuse(RecoveryFailure.UNKNOWN_SESSION)
        if not await self._sid_released(session.sid, namespace):
            # its sid is still live here: never two sockets with one sid; keep the
            # session for a later try
            await self.store.save_session(session)
            return self._refuse(RecoveryFailure.UNKNOWN_SESSION)
        start, failure = replay_start(session, offset, self.store.epoch)
        if start is None:
            return self._refuse(failure or RecoveryFailure.MALFORMED)
        if start < membership_of(session).since:  # which rooms it was in is forgotten
            return self._refuse(RecoveryFailure.NOT_RETAINED)
        manager = self.durable_manager
        hold = manager.open_hold(namespace, session.sid, eio_sid, session.rooms)
        # this node may lag behind the one the client left: what the client already
        # has (up to ``start``) must not come again from the hold
        hold.upto = max(hold.upto, start)
        restore = Restore(pid=pid, session=session, hold=hold)
        cap = self.recovery.max_replay_packets if self.recovery else 0
        try:
            failure = check_window(start, hold.upto, await self.store.bounds(), cap)
            if failure is None:
                restore.replay = await self._read_replay(namespace, session, start, hold.upto)
                # a purge that ran while we read could have left holes: look again
                failure = check_window(start, hold.upto, await self.store.bounds(), cap)
        except Exception:
            logger.exception("reading the replay failed")
            failure = RecoveryFailure.STORE_UNAVAILABLE
        if failure is not None:
            manager.close_hold(namespace, session.sid)
            return self._refuse(failure)
        return Attempt(restore=restore)

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
        membership = membership_of(session)
        replay: list[StoredPacket] = []
        after = start
        while after < upto:
            page = await self.store.read(after=after, until=upto, limit=REPLAY_PAGE,
                                         namespace=namespace)
            if not page:
                break
            replay.extend(p for p in page if membership.was_for(p, session.sid))
            after = page[-1].seq
        return replay

    @staticmethod
    def _refuse(failure: RecoveryFailure) -> Attempt:
        logger.info("recovery refused: %s", failure.value, extra={"action": "recovery_refused"})
        return Attempt(failure=failure)

    async def _evict_live_socket(self, namespace: str, pid_hash: str, eio_sid: str) -> None:
        """A reconnect can beat the detection of its dead transport: close that one first,
        saving its session, so the new connection recovers (socket.io #4880).

        Of two connections presenting one pid, the later takes over: exactly one socket
        holds the session at any time, and the earlier one's client sees a disconnect.
        """
        sid = self._live_pids.get((namespace, pid_hash))
        if sid is None:
            return
        old_eio = self.manager.eio_sid_from_sid(sid, namespace)
        if not old_eio or old_eio == eio_sid:  # a repeated CONNECT on the same connection
            return
        self._evicting.add(old_eio)
        try:
            socket = self.eio._get_socket(old_eio)
            await socket.close(wait=False, reason=self.reason.TRANSPORT_CLOSE)
            self.eio.sockets.pop(old_eio, None)
        except KeyError:
            pass
        finally:
            self._evicting.discard(old_eio)

    async def _abandon_restore(self, namespace: str, restore: Restore) -> None:
        """The connect handler refused (or failed): keep the session for a later try."""
        self.durable_manager.close_hold(namespace, restore.session.sid)
        self._recovered.discard((namespace, restore.session.sid))
        if not self.manager.is_connected(restore.session.sid, namespace):
            await self.store.save_session(restore.session)

    async def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        attempt = current_attempt.get() if event == "connect" else None
        if attempt is not None and self.recovery is not None:
            if attempt.failure is not None and args:
                # visible to the connect handler through recovery_failure(sid)
                self._failures[(namespace, args[0])] = attempt.failure
            if attempt.restore is not None and self.recovery.skip_middlewares:
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
        else:
            pid, start_seq = new_pid(), self.durable_manager.delivered
        self._pids[(namespace, sid)] = pid
        self._live_pids[(namespace, hash_pid(pid))] = sid
        self._start_seq[(namespace, sid)] = start_seq
        pkt.data = {**pkt.data, "pid": pid}
        await super()._send_packet(eio_sid, pkt)
        if restore is not None and restore.session.sid == sid:
            await self._send_replay(eio_sid, namespace, restore)

    async def _send_replay(self, eio_sid: str, namespace: str, restore: Restore) -> None:
        """Missed packets, then what arrived meanwhile: each once, in order, before live."""
        manager = self.durable_manager
        sid = restore.session.sid
        for stored in restore.replay:
            parts = manager._encode(namespace, [*stored.data,
                                                format_offset(self.store.epoch, stored.seq)])
            for part in parts:
                await self._send_eio_packet(eio_sid, part)
            manager.last_sent[(namespace, sid)] = stored.seq
        await manager.release_hold(namespace, restore.hold)
        restore.completed = True
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
                and self.manager.is_connected(sid, namespace) \
                and self._is_recoverable(eio_sid, reason):
            await self._save_session(eio_sid, sid, namespace)
        await super()._handle_disconnect(eio_sid, namespace, reason)
        if sid is not None:
            self._forget(sid, namespace)

    async def _save_session(self, eio_sid: str, sid: str, namespace: str) -> None:
        """Awaited before the socket is forgotten: a fast reconnect finds it stored."""
        pid = self._pids.get((namespace, sid))
        if pid is None:
            return
        manager = self.durable_manager
        now = time.time()
        duration = self.recovery.max_disconnection_duration if self.recovery else 0.0
        try:
            eio_session = await self.eio.get_session(eio_sid)
            session = Session(
                pid_hash=hash_pid(pid), namespace=namespace, sid=sid,
                rooms=tuple(manager.get_rooms(sid, namespace)),
                data=eio_session.get(namespace, {}), epoch=self.store.epoch,
                start_seq=self._start_seq.get((namespace, sid), 0),
                position=manager.delivered,
                last_sent_seq=manager.last_sent.get((namespace, sid)),
                disconnected_at=now, expires_at=now + duration,
                membership=manager.membership(sid, namespace),
            )
            await self.store.save_session(session)
        except Exception:  # the disconnect goes on; only the recovery is lost
            logger.exception("could not save the session of %s [%s]; it will not recover",
                             sid, namespace)

    def _forget(self, sid: str, namespace: str) -> None:
        if self.manager.is_connected(sid, namespace):
            return
        pid = self._pids.pop((namespace, sid), None)
        if pid is not None:
            self._live_pids.pop((namespace, hash_pid(pid)), None)
        self._start_seq.pop((namespace, sid), None)
        self._recovered.discard((namespace, sid))
        self._failures.pop((namespace, sid), None)


_socketio.check_server_surface()
