"""The cluster layer: python-socketio's manager, spanning nodes through the store.

python-socketio's pub/sub managers carry these between nodes; so does
:class:`ClusterManager`, over the store's control messages (:mod:`._control`): disconnect
a remote sid, make a remote socket enter or leave a room, close a room everywhere, and
live emits (volatile, with an ack, or in a namespace without recovery) that reach remote
sockets, with acks routed back to the node that asked; and the emitters' room-wide
commands (every socket of a room joins, leaves or is disconnected), which act on each
node's connected sockets. It also hands a live session over
to another node on request. Stored emits need none of this: every node follows the packet
history itself (:class:`~.manager.DurableManager`, which derives from this class).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import socketio

from . import _control as control
from ._codec import Codec
from .stores.base import ControlMessage, Store

logger = logging.getLogger(__name__)

#: True while a control message is handled: the store's follower is waiting for the
#: handler, so an emit made there (say in a disconnect handler) must not wait for the
#: follower to deliver it
in_control_handler: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "durable_adapter_in_control_handler", default=False)


class LetGo(Protocol):
    """Closes this node's live socket holding the session of (namespace, pid hash), the
    session saved as dropped, so that another node can restore it (the server's)."""

    def __call__(self, namespace: str, pid_hash: str) -> Awaitable[None]: ...


async def _cannot_let_go(namespace: str, pid_hash: str) -> None:
    raise RuntimeError("no server told this manager how to let a session go")


class ClusterManager(socketio.AsyncManager):  # type: ignore[misc]
    """python-socketio's manager, with the operations on other nodes' sockets.

    :param store: carries the control messages (and, in the subclass, the history).
    :param let_go: see :class:`LetGo`; a server may also set :attr:`let_go` once, after
                   construction. Until then a handover request goes unanswered, and the
                   asking node takes this one for dead after its handover timeout.
    """

    if TYPE_CHECKING:  # python-socketio's, which ships no type information
        server: Any

        def is_connected(self, sid: str, namespace: str) -> bool: ...

        def basic_enter_room(self, sid: str, namespace: str, room: str | None,
                             eio_sid: str | None = None) -> None: ...

        def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None: ...

        def basic_close_room(self, room: str, namespace: str) -> None: ...

    def __init__(self, store: Store, *, let_go: LetGo | None = None) -> None:
        super().__init__()
        self.store = store
        #: this node's id in control messages, leases and live sessions
        self.host_id = uuid.uuid4().hex
        self.let_go: LetGo = let_go if let_go is not None else _cannot_let_go
        self._remote_callbacks: dict[str, Callable[..., Any]] = {}
        self._handovers: dict[str, asyncio.Future[None]] = {}
        self._handing_over: set[asyncio.Task[None]] = set()
        store.on_control(self._on_control)

    def set_server(self, server: Any) -> None:
        """python-socketio's; the store encodes with the server's JSON module (its
        ``json=`` option), as the server encodes packets."""
        super().set_server(server)
        self.store.codec = Codec(server.packet_class.json)

    # -- what the layer above provides -------------------------------------------

    async def start(self) -> None:
        """Open the store (idempotent): a node that has had no connection yet opens it
        before its first control message."""
        raise NotImplementedError

    async def send_live_local(self, event: str, args: list[Any], namespace: str,
                              rooms: tuple[str, ...], except_rooms: tuple[str, ...],
                              callback: Callable[..., Any] | None) -> None:
        """Send a live emit to this node's matching sockets."""
        raise NotImplementedError

    async def rooms_committed(self, namespace: str, sids: list[str]) -> None:
        """Return once the room changes of ``sids`` made so far are stored (bounded)."""

    # -- python-socketio's manager API ----------------------------------------

    async def can_disconnect(self, sid: str, namespace: str) -> bool:
        if self._is_local(sid, namespace):
            return True
        await self._publish(control.Disconnect(sid=sid, namespace=namespace))
        return False

    async def enter_room(self, sid: str, namespace: str, room: str,
                         eio_sid: str | None = None) -> None:
        if self._is_local(sid, namespace):
            self.basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        else:
            await self._publish(control.EnterRoom(sid=sid, namespace=namespace, room=room))

    async def leave_room(self, sid: str, namespace: str, room: str) -> None:
        if self._is_local(sid, namespace):
            self.basic_leave_room(sid, namespace, room)
        else:
            await self._publish(control.LeaveRoom(sid=sid, namespace=namespace, room=room))

    async def close_room(self, room: str, namespace: str) -> None:
        self.basic_close_room(room, namespace)
        await self._publish(control.CloseRoom(room=room, namespace=namespace))

    # -- sending -----------------------------------------------------------------

    async def publish_live(self, event: str, args: list[Any], namespace: str,
                           rooms: tuple[str, ...], except_rooms: tuple[str, ...],
                           callback: Callable[..., Any] | None) -> None:
        """Hand a live emit to the other nodes; an ack comes back to this node."""
        callback_id = None
        if callback is not None:
            callback_id = uuid.uuid4().hex
            self._remote_callbacks[callback_id] = callback
        await self._publish(control.EmitLive(
            namespace=namespace, event=event, args=args, rooms=rooms,
            except_rooms=except_rooms, callback_id=callback_id))

    async def request_handover(self, owner: str, namespace: str, pid_hash: str,
                               wait: float) -> bool:
        """Ask ``owner`` to close its socket holding this session and save it as dropped;
        True once it answered, False if it did not within ``wait`` seconds."""
        request_id = uuid.uuid4().hex
        answered = self._handovers[request_id] = asyncio.get_running_loop().create_future()
        try:
            await self._publish(control.Handover(namespace=namespace, pid_hash=pid_hash,
                                                 request_id=request_id), target=owner)
            await asyncio.wait_for(asyncio.shield(answered), wait)
            return True
        except TimeoutError:
            logger.warning("node %s did not hand over a session within %.1f s: taken as "
                           "dead", owner, wait, extra={"action": "handover_timeout"})
            return False
        finally:
            self._handovers.pop(request_id, None)

    async def _publish(self, command: control.Command, target: str | None = None) -> None:
        await self.start()
        await self.store.publish_control(
            control.to_message(command, origin=self.host_id, target=target,
                               codec=self.store.codec))

    def _is_local(self, sid: str, namespace: str) -> bool:
        if self.is_connected(sid, namespace):
            return True
        pre_connected = getattr(self, "is_pre_connected", None)  # python-socketio 5.18+
        return pre_connected is not None and bool(pre_connected(sid, namespace))

    # -- receiving -------------------------------------------------------------

    async def _on_control(self, message: ControlMessage) -> None:
        if message.target is not None and message.target != self.host_id:
            return
        if message.origin == self.host_id and message.target is None:
            return
        kind = control.COMMANDS.get(message.method)
        if kind is None:
            logger.warning("unknown control message %r", message.method)
            return
        token = in_control_handler.set(True)
        try:
            await self._handle(message.origin, kind.from_body(message.body, self.store.codec))
        except Exception:  # a bad message must not stop the listener
            logger.exception("control message %r failed", message.method)
        finally:
            in_control_handler.reset(token)

    async def _handle(self, origin: str, command: control.Command) -> None:
        match command:
            case control.Disconnect(sid=sid, namespace=namespace):
                if self._is_local(sid, namespace):
                    await self.server.disconnect(sid, namespace=namespace, ignore_queue=True)
            case control.EnterRoom(sid=sid, namespace=namespace, room=room):
                if self._is_local(sid, namespace):
                    self.basic_enter_room(sid, namespace, room)
            case control.LeaveRoom(sid=sid, namespace=namespace, room=room):
                if self._is_local(sid, namespace):
                    self.basic_leave_room(sid, namespace, room)
            case control.CloseRoom(room=room, namespace=namespace):
                self.basic_close_room(room, namespace)
            case control.SocketsJoin() | control.SocketsLeave() | control.DisconnectSockets():
                await self._room_wide(command)
            case control.EmitLive():
                callback = None
                if command.callback_id is not None:
                    callback = functools.partial(self._return_callback_to, origin,
                                                 command.callback_id)
                await self.send_live_local(command.event, command.args, command.namespace,
                                           command.rooms, command.except_rooms, callback)
            case control.Handover(namespace=namespace, pid_hash=pid_hash,
                                  request_id=request_id):
                # in a task of its own: letting go may wait for a restore under way here,
                # and the follower running this handler must go on delivering meanwhile
                task = asyncio.create_task(
                    self._hand_over(origin, namespace, pid_hash, request_id))
                self._handing_over.add(task)
                task.add_done_callback(self._handing_over.discard)
            case control.HandoverDone(request_id=request_id):
                answered = self._handovers.get(request_id)
                if answered is not None and not answered.done():
                    answered.set_result(None)
            case control.Callback(callback_id=callback_id, args=args):
                waiting = self._remote_callbacks.pop(callback_id, None)
                if waiting is not None:
                    result = waiting(*args)
                    if hasattr(result, "__await__"):
                        await result

    async def _room_wide(self, command: control.SocketsJoin | control.SocketsLeave
                         | control.DisconnectSockets) -> None:
        """An emitter's command on every connected socket of a room (or namespace) that
        this node holds. Room changes are written through before the follower goes on:
        the packets emitted after the command reach sessions that have the rooms."""
        namespace = command.namespace
        if namespace not in self.rooms:
            return
        sockets = list(self.get_participants(
            namespace, list(command.rooms) if command.rooms else None))
        match command:
            case control.SocketsJoin(join=rooms):
                for sid, eio_sid in sockets:
                    for room in rooms:
                        self.basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
                await self.rooms_committed(namespace, [sid for sid, _ in sockets])
            case control.SocketsLeave(leave=rooms):
                for sid, _ in sockets:
                    for room in rooms:
                        self.basic_leave_room(sid, namespace, room)
                await self.rooms_committed(namespace, [sid for sid, _ in sockets])
            case control.DisconnectSockets(close=close):
                for sid, eio_sid in sockets:
                    if close:  # every namespace of the connection, then the transport
                        for other in list(self.rooms):
                            other_sid = self.sid_from_eio_sid(eio_sid, other)
                            if other_sid is not None:
                                await self.server.disconnect(other_sid, namespace=other,
                                                             ignore_queue=True)
                        await self.server.eio.disconnect(eio_sid)
                    elif self.is_connected(sid, namespace):
                        await self.server.disconnect(sid, namespace=namespace,
                                                     ignore_queue=True)

    async def _hand_over(self, origin: str, namespace: str, pid_hash: str,
                         request_id: str) -> None:
        try:
            await self.let_go(namespace, pid_hash)
            await self._publish(control.HandoverDone(request_id=request_id), target=origin)
        except Exception:  # unanswered, the asking node takes this one for dead
            logger.exception("handing a session over to %s failed", origin)

    async def _return_callback_to(self, origin: str, callback_id: str, *args: Any) -> None:
        await self._publish(control.Callback(callback_id=callback_id, args=list(args)),
                            target=origin)
