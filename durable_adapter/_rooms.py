"""The rooms layer: which room each socket is in, since when, and its session written
through.

Each socket of this node has one :class:`~._sockets.SocketState`, made when python-socketio
registers its sid and dropped when it leaves. Every room change is logged in seq
positions (:class:`~.stores.membership.MembershipLog`: a replay sends what live sent)
and marks the socket's session for the :class:`~._write_through.SessionWriter`; the async
forms (``await sio.enter_room`` and co.) return once that write is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ._cluster import ClusterManager, LetGo
from ._sockets import SocketRegistry, SocketState
from ._write_through import WRITE_WAIT, SessionWriter
from .stores.base import Session, Store
from .stores.membership import MembershipLog

logger = logging.getLogger(__name__)


class RoomsManager(ClusterManager):
    """Rooms, room stays and written-through sessions of this node's sockets.

    :param recovery_namespaces: the namespaces that recover; None: all but ``/admin``.
    :param build_session: the session of a live socket as the store keeps it while it
        lives, None when it has none to store (the server reads its data).
    :param write_through: False writes sessions only at drops.
    """

    def __init__(self, store: Store, *, let_go: LetGo,
                 recovery_namespaces: frozenset[str] | None,
                 build_session: Callable[[str, str], Awaitable[Session | None]],
                 write_through: bool) -> None:
        super().__init__(store, let_go=let_go)
        self.recovery_namespaces = recovery_namespaces
        #: the last seq delivered to this node's sockets (kept by the delivery layer);
        #: room stays are logged against it
        self.delivered = 0
        #: one record per socket of this node
        self.sockets = SocketRegistry()
        #: the one writer of this node's sessions
        self.sessions = SessionWriter(store, self.host_id, build_session,
                                      live=write_through)

    def recovers(self, namespace: str) -> bool:
        if self.recovery_namespaces is None:
            return namespace != "/admin"
        return namespace in self.recovery_namespaces

    # -- python-socketio's room operations ------------------------------------

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        self.sockets.remove(namespace, sid)  # first: its rooms go, nothing to write
        super().basic_disconnect(sid, namespace, **kwargs)

    def basic_enter_room(self, sid: str, namespace: str, room: str | None,
                         eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        state = self.sockets.get(namespace, sid)
        if state is None:
            if eio_sid is None:
                eio_sid = self.eio_sid_from_sid(sid, namespace)
            if eio_sid is None:
                return
            state = self.sockets.add(SocketState(
                namespace=namespace, sid=sid, eio_sid=eio_sid, start_seq=self.delivered,
                resume_seq=self.delivered,
                membership=MembershipLog() if self.recovers(namespace) else None))
        if room is None:
            return
        state.rooms[room] = None
        if room != sid and state.membership is not None:
            state.membership.join(room, self.delivered)
            self.sessions.mark(namespace, sid)

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        super().basic_leave_room(sid, namespace, room)
        state = self.sockets.get(namespace, sid)
        if state is None or room is None:
            return
        state.rooms.pop(room, None)
        if state.membership is not None:
            state.membership.leave(room, self.delivered)
            self.sessions.mark(namespace, sid)

    async def enter_room(self, sid: str, namespace: str, room: str,
                         eio_sid: str | None = None) -> None:
        """python-socketio's; returns once the socket's stored session has the room."""
        await super().enter_room(sid, namespace, room, eio_sid=eio_sid)
        await self.session_committed(namespace, sid)

    async def leave_room(self, sid: str, namespace: str, room: str) -> None:
        """python-socketio's; returns once the socket's stored session lost the room."""
        await super().leave_room(sid, namespace, room)
        await self.session_committed(namespace, sid)

    async def close_room(self, room: str, namespace: str) -> None:
        """python-socketio's; returns once the stored sessions of this node's sockets
        that were in ``room`` lost it."""
        members = [sid for sid, _ in self.get_participants(namespace, room)] \
            if room in self.rooms.get(namespace, {}) else []
        await super().close_room(room, namespace)
        await self.sessions.committed([(namespace, sid) for sid in members
                                       if self._accepted(namespace, sid)])

    async def rooms_committed(self, namespace: str, sids: list[str]) -> None:
        """The cluster layer's hook: the sessions of ``sids`` written through, in one
        write for all of them (a failing store delays once, then delivery goes on)."""
        await self.sessions.committed([(namespace, sid) for sid in sids
                                       if self._accepted(namespace, sid)], strict=False)

    async def session_committed(self, namespace: str, sid: str) -> None:
        """Wait until ``sid``'s session as of now is committed (nothing to wait for
        before its connect handler accepted it: its CONNECT reply writes it)."""
        if self._accepted(namespace, sid):
            await self.sessions.committed([(namespace, sid)], within=WRITE_WAIT)

    def _accepted(self, namespace: str, sid: str) -> bool:
        state = self.sockets.get(namespace, sid)
        return state is not None and state.recoverable and self.sessions.live

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        """The rooms ``sid`` is in. python-socketio's scans every room of the namespace
        (each socket's own room included: O(sockets) per call); a written-through
        session asks at each of its socket's changes."""
        state = self.sockets.get(namespace, sid)
        return [] if state is None else list(state.rooms)

    # -- restores ----------------------------------------------------------------

    def restore_rooms(self, state: SocketState, rooms: Iterable[str],
                      membership: MembershipLog) -> None:
        """Put a restored socket back in its rooms; its stays go on (no new join)."""
        state.membership = membership.copy()
        for room in rooms:
            if room == state.sid:
                continue
            try:
                super().basic_enter_room(state.sid, state.namespace, room)
                state.rooms[room] = None
            except ValueError:  # 5.17+: a stored room that is now another live sid's room
                logger.warning("not restoring room %r of %s: it is a sid room", room,
                               state.sid)
                state.membership.leave(room, self.delivered)

    def detach(self, sid: str, namespace: str) -> SocketState | None:
        """Take a live ``sid`` out of every room and out of the registry (its
        connection stays open), so that a restore can register it on another
        connection; :meth:`reattach` puts the returned record back."""
        state = self.sockets.remove(namespace, sid)
        rooms = [room for room, members in self.rooms.get(namespace, {}).items()
                 if sid in members]
        for room in sorted(rooms, key=lambda r: r is None):  # the None room last
            super().basic_leave_room(sid, namespace, room)
        return state

    def reattach(self, state: SocketState, held_upto: int | None) -> None:
        """Undo :meth:`detach`: the socket is back on its connection with its rooms,
        and its room stays go on as if it had never left (what was held went to it)."""
        sid, namespace = state.sid, state.namespace
        self.sockets.add(state)
        super().basic_enter_room(sid, namespace, None, eio_sid=state.eio_sid)
        for room in sorted(state.rooms, key=lambda r: r != sid):
            super().basic_enter_room(sid, namespace, room, eio_sid=state.eio_sid)
        if held_upto is not None:
            state.last_sent = max(held_upto, state.last_sent or 0)
