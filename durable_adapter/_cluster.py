"""Operations on sockets held by other nodes, carried by the store's control messages.

python-socketio's pub/sub managers offer these between nodes; so do we: disconnect a
remote sid, make a remote socket enter or leave a room, close a room everywhere, and
live emits (volatile, with an ack, or in a namespace without recovery) that reach remote
sockets, with acks routed back to the node that asked. Stored emits need none of this:
every node follows the packet history itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from ._codec import decode_value, encode_value
from .stores.base import ControlMessage, Store

logger = logging.getLogger(__name__)

#: True while a control message is handled: the store's follower is waiting for the
#: handler, so an emit made there (say in a disconnect handler) must not wait for the
#: follower to deliver it
in_control_handler: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "durable_adapter_in_control_handler", default=False)


def pack(data: Any) -> str:
    return base64.b64encode(encode_value(data)).decode()


def unpack(text: str) -> Any:
    return decode_value(base64.b64decode(text))


class ClusterOps:
    """Mixed into the manager: the python-socketio manager methods that span nodes."""

    store: Store
    host_id: str
    _remote_callbacks: dict[str, Callable[..., Any]]
    _handovers: dict[str, asyncio.Future[None]]
    _handing_over: set[asyncio.Task[None]]
    #: closes the live socket of (namespace, pid hash) here, its session saved as a drop
    #: (set by the server)
    let_go: Callable[[str, str], Awaitable[None]]

    def _init_cluster(self) -> None:
        self.host_id = uuid.uuid4().hex
        self._remote_callbacks = {}
        self._handovers = {}
        self._handing_over = set()
        self.store.on_control(self._on_control)

    async def request_handover(self, owner: str, namespace: str, pid_hash: str,
                               wait: float) -> bool:
        """Ask ``owner`` to close its socket holding this session and save it as dropped;
        True once it answered, False if it did not within ``wait`` seconds."""
        request_id = uuid.uuid4().hex
        answered = self._handovers[request_id] = asyncio.get_running_loop().create_future()
        try:
            await self._publish("handover", target=owner, namespace=namespace,
                                pid_hash=pid_hash, request_id=request_id)
            await asyncio.wait_for(asyncio.shield(answered), wait)
            return True
        except TimeoutError:
            logger.warning("node %s did not hand over a session within %.1f s: taken as "
                           "dead", owner, wait, extra={"action": "handover_timeout"})
            return False
        finally:
            self._handovers.pop(request_id, None)

    async def _publish(self, method: str, target: str | None = None, **body: Any) -> None:
        manager: Any = self
        await manager.start()  # a node that has had no connection yet opens its store now
        await self.store.publish_control(
            ControlMessage(method=method, origin=self.host_id, target=target, body=body))

    def _is_local(self, sid: str, namespace: str) -> bool:
        manager: Any = self
        return bool(manager.is_connected(sid, namespace)) or (
            hasattr(manager, "is_pre_connected") and manager.is_pre_connected(sid, namespace))

    # -- python-socketio's manager API ----------------------------------------

    async def can_disconnect(self, sid: str, namespace: str) -> bool:
        if self._is_local(sid, namespace):
            return True
        await self._publish("disconnect", sid=sid, namespace=namespace)
        return False

    async def enter_room(self, sid: str, namespace: str, room: str,
                         eio_sid: str | None = None) -> None:
        if self._is_local(sid, namespace):
            manager: Any = self
            manager.basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        else:
            await self._publish("enter_room", sid=sid, namespace=namespace, room=room)

    async def leave_room(self, sid: str, namespace: str, room: str) -> None:
        if self._is_local(sid, namespace):
            manager: Any = self
            manager.basic_leave_room(sid, namespace, room)
        else:
            await self._publish("leave_room", sid=sid, namespace=namespace, room=room)

    async def close_room(self, room: str, namespace: str) -> None:
        manager: Any = self
        manager.basic_close_room(room, namespace)
        await self._publish("close_room", room=room, namespace=namespace)

    async def publish_live(self, event: str, args: list[Any], namespace: str,
                           rooms: tuple[str, ...], except_rooms: tuple[str, ...],
                           callback: Callable[..., Any] | None) -> None:
        """Hand a live emit to the other nodes; an ack comes back to this node."""
        callback_id = None
        if callback is not None:
            callback_id = uuid.uuid4().hex
            self._remote_callbacks[callback_id] = callback
        await self._publish("emit_live", namespace=namespace, event=event, args=pack(args),
                            rooms=list(rooms), except_rooms=list(except_rooms),
                            callback_id=callback_id)

    # -- receiving -------------------------------------------------------------

    async def _on_control(self, message: ControlMessage) -> None:
        if message.target is not None and message.target != self.host_id:
            return
        if message.origin == self.host_id and message.target is None:
            return
        handler = getattr(self, f"_remote_{message.method}", None)
        if handler is None:
            logger.warning("unknown control message %r", message.method)
            return
        token = in_control_handler.set(True)
        try:
            await handler(message.origin, **message.body)
        except Exception:  # a bad message must not stop the listener
            logger.exception("control message %r failed", message.method)
        finally:
            in_control_handler.reset(token)

    async def _remote_disconnect(self, origin: str, *, sid: str, namespace: str) -> None:
        if self._is_local(sid, namespace):
            manager: Any = self
            await manager.server.disconnect(sid, namespace=namespace, ignore_queue=True)

    async def _remote_enter_room(self, origin: str, *, sid: str, namespace: str,
                                 room: str) -> None:
        if self._is_local(sid, namespace):
            manager: Any = self
            manager.basic_enter_room(sid, namespace, room)

    async def _remote_leave_room(self, origin: str, *, sid: str, namespace: str,
                                 room: str) -> None:
        if self._is_local(sid, namespace):
            manager: Any = self
            manager.basic_leave_room(sid, namespace, room)

    async def _remote_close_room(self, origin: str, *, room: str, namespace: str) -> None:
        manager: Any = self
        manager.basic_close_room(room, namespace)

    async def _remote_emit_live(self, origin: str, *, namespace: str, event: str, args: str,
                                rooms: list[str], except_rooms: list[str],
                                callback_id: str | None) -> None:
        callback = None
        if callback_id is not None:
            callback = functools.partial(self._return_callback_to, origin, callback_id)
        manager: Any = self
        await manager.send_live_local(event, unpack(args), namespace, tuple(rooms),
                                      tuple(except_rooms), callback)

    async def _remote_handover(self, origin: str, *, namespace: str, pid_hash: str,
                               request_id: str) -> None:
        # in a task of its own: letting go may wait for a restore under way here, and
        # the follower running this handler must go on delivering meanwhile
        task = asyncio.create_task(self._hand_over(origin, namespace, pid_hash, request_id))
        self._handing_over.add(task)
        task.add_done_callback(self._handing_over.discard)

    async def _hand_over(self, origin: str, namespace: str, pid_hash: str,
                         request_id: str) -> None:
        try:
            await self.let_go(namespace, pid_hash)
            await self._publish("handover_done", target=origin, request_id=request_id)
        except Exception:  # unanswered, the asking node takes this one for dead
            logger.exception("handing a session over to %s failed", origin)

    async def _remote_handover_done(self, origin: str, *, request_id: str) -> None:
        answered = self._handovers.get(request_id)
        if answered is not None and not answered.done():
            answered.set_result(None)

    async def _return_callback_to(self, origin: str, callback_id: str, *args: Any) -> None:
        await self._publish("callback", target=origin, callback_id=callback_id,
                            args=pack(list(args)))

    async def _remote_callback(self, origin: str, *, callback_id: str, args: str) -> None:
        callback = self._remote_callbacks.pop(callback_id, None)
        if callback is not None:
            result = callback(*unpack(args))
            if hasattr(result, "__await__"):
                await result
