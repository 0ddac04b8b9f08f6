"""The core of the sync server: :class:`~.server.AsyncServer` itself, run on a loop thread.

:class:`durable_adapter.Server` is python-socketio's sync server on the outside (its
Engine.IO server, its threads, its web integrations) and this core on the inside: every
Socket.IO packet, every room change and every emit is handled by the same code as the
async server's, on one event loop in a thread of its own. Two seams make that work:

- :class:`EngineIOBridge` is the async Engine.IO surface the core sends through, over the
  sync server's ``engineio.Server``: a send puts the packet on the connection's queue
  (a ``queue.Queue`` under ``threading``: safe from any thread), which its transport's
  own thread writes out.
- :class:`SyncCore` runs the application's (sync) handlers each in a thread of its own,
  as python-socketio's sync server does, never on the loop: a handler that calls back
  into the server blocks its own thread, not the loop that serves the call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import engineio
import socketio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet

from ._loop_thread import in_thread
from .server import AsyncServer

logger = logging.getLogger(__name__)

#: python-socketio's options that the core takes as the sync server got them (the rest
#: are Engine.IO's, which only the sync server's own Engine.IO server uses)
SOCKETIO_OPTIONS = ("logger", "serializer", "json", "async_handlers", "always_connect",
                    "namespaces")


class EngineIOBridge:
    """What python-socketio's ``AsyncServer`` (and ours) use of an ``engineio.AsyncServer``,
    done on a sync ``engineio.Server``.

    Sends never block: they queue. What may block (closing a connection waits for its
    disconnect handler, which calls back into the loop) runs in a thread.
    """

    def __init__(self, eio: engineio.Server) -> None:
        self.eio = eio
        self.logger = eio.logger
        self.async_mode = eio.async_mode
        self.generate_id: Callable[[], str] = eio.generate_id
        #: the core's corked frames (set once the core made them)
        self.frames: SyncFrames | None = None

    @property
    def sockets(self) -> dict[str, Any]:
        sockets: dict[str, Any] = self.eio.sockets
        return sockets

    def on(self, event: str, handler: Any = None) -> None:
        """The sync server receives Engine.IO's events and hands them to the core."""

    async def send(self, sid: str, data: Any) -> None:
        await self.send_packet(sid, eio_packet.Packet(eio_packet.MESSAGE, data=data))

    async def send_packet(self, sid: str, pkt: eio_packet.Packet) -> None:
        if self.frames is not None:  # what was handed over before goes first
            self.frames.flush(self.eio.sockets.get(sid))
        try:
            self.eio.send_packet(sid, pkt)
        except eio_exceptions.SocketIsClosedError:
            pass  # closed meanwhile by its transport's thread: as a send to a gone sid

    async def get_session(self, sid: str) -> dict[str, Any]:
        session: dict[str, Any] = self.eio.get_session(sid)
        return session

    async def save_session(self, sid: str, session: dict[str, Any]) -> None:
        self.eio.save_session(sid, session)

    async def disconnect(self, sid: str | None = None) -> None:
        self.flush()
        await in_thread(self.eio.disconnect, sid)

    async def shutdown(self) -> None:
        self.flush()
        await in_thread(self.eio.shutdown)

    def flush(self) -> None:
        """Every frame handed over so far goes on its socket's queue (before a close)."""
        if self.frames is not None:
            self.frames.flush()

    def transport(self, sid: str) -> str:
        transport: str = self.eio.transport(sid)
        return transport

    def start_background_task(self, target: Callable[..., Any], *args: Any,
                              **kwargs: Any) -> asyncio.Task[Any]:
        return asyncio.ensure_future(target(*args, **kwargs))

    async def sleep(self, seconds: float = 0) -> None:
        await asyncio.sleep(seconds)

    def create_event(self) -> asyncio.Event:
        return asyncio.Event()


class _Frame(eio_packet.Packet):  # type: ignore[misc]
    """An Engine.IO packet encoded once for all its recipients: each socket's writer
    thread writes the same text instead of encoding it again."""

    def __init__(self, frame: str) -> None:
        super().__init__(int(frame[0]), frame[1:])
        self.frame = frame

    def encode(self, b64: bool = False) -> str:
        return self.frame


class SyncFrames:
    """The sync twin of :class:`~._direct.DirectWrites`: a delivery's frame, encoded once,
    put on each recipient's python-engineio queue from the loop, as
    ``engineio.Server.send_packet`` would (its writer thread writes it), without a
    coroutine chain through python-socketio per recipient.

    Corked per loop round, as the async server's direct writes are: the frames handed
    over in one round go on each socket's queue back to back at its end, so a writer
    thread wakes once for all of them instead of once per packet (each wake-up is a
    thread switch, and the loop thread holds the GIL meanwhile). Any other send to a
    socket (:meth:`EngineIOBridge.send_packet`) and any close hands its corked frames
    over first, so a socket's packets keep their order.

    python-engineio's sync socket takes a packet on its queue from any thread; the ping
    timeout is checked as its ``send`` does (and each packet logged, when it logs them).
    """

    def __init__(self, eio: engineio.Server) -> None:
        self.eio = eio
        #: frames handed to sockets' queues here / left to python-socketio's send
        self.direct = 0
        self.queued = 0
        self._last: _Frame | None = None
        #: frames of this loop round, per socket, handed over by :meth:`flush`
        self._corked: dict[Any, list[_Frame]] = {}
        self._flush_handle: asyncio.Handle | None = None

    def active(self) -> bool:
        return True

    def write(self, eio_sid: str, frame: str, data: bytes) -> bool:
        """Queue ``frame`` for ``eio_sid`` (at the end of this loop round); False when it
        has no socket here (python-socketio's send then finds none either)."""
        socket = self.eio.sockets.get(eio_sid)
        if socket is None:
            self.queued += 1
            return False
        pkt = self._last
        if pkt is None or pkt.frame is not frame:  # one packet per frame, not per socket
            pkt = self._last = _Frame(frame)
        self.direct += 1
        corked = self._corked.get(socket)
        if corked is None:
            corked = self._corked[socket] = []
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        corked.append(pkt)
        return True

    def _flush(self) -> None:
        self._flush_handle = None
        self.flush()

    def flush(self, socket: Any = None) -> None:
        """Hand the corked frames to their sockets' queues now: ``socket``'s only, if
        given (before another send to it)."""
        if socket is not None:
            frames = self._corked.pop(socket, None)
            if frames:
                self._hand(socket, frames)
            return
        corked, self._corked = self._corked, {}
        for each, frames in corked.items():
            self._hand(each, frames)

    def _hand(self, socket: Any, frames: list[_Frame]) -> None:
        try:
            if not self.eio.logger.isEnabledFor(logging.INFO):
                # what its send does, minus a log call per packet that logs nothing
                if socket.check_ping_timeout():
                    for pkt in frames:
                        socket.queue.put(pkt)
            else:
                for pkt in frames:
                    socket.send(pkt)
        except eio_exceptions.SocketIsClosedError:
            pass  # closed meanwhile by its transport's thread: as a send to a gone sid


class _SyncHandlers(socketio.AsyncServer):  # type: ignore[misc]
    """Runs the sync server's handlers (functions and ``socketio.Namespace`` classes,
    registered on it) in threads: placed below :class:`AsyncServer` so that everything
    it does around a handler (skip_middlewares, the accepted flag) stays as it is."""

    face: Any  # the durable_adapter.Server

    async def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        return await in_thread(self._run_handler, event, namespace, *args)

    def _run_handler(self, event: str, namespace: str, *args: Any) -> Any:
        """In the handler's thread: the handler, then its emits out (before its ack)."""
        try:
            return socketio.Server._trigger_event(self.face, event, namespace, *args)
        finally:
            self.face._settle()


class SyncCore(AsyncServer, _SyncHandlers):
    """The async server behind a :class:`durable_adapter.Server`; not used on its own."""

    def __init__(self, face: socketio.Server, **kwargs: Any) -> None:
        self.face = face
        self._bridge = EngineIOBridge(face.eio)
        super().__init__(**kwargs)
        if self.recovery is not None:
            self.durable_manager.direct = self._bridge.frames = SyncFrames(face.eio)
        # one registry of handlers, environs and the "no handler" mark for both faces
        self.handlers = face.handlers
        self.namespace_handlers = face.namespace_handlers
        self.environ = face.environ
        self.not_handled = face.not_handled

    def _engineio_server_class(self) -> Callable[..., EngineIOBridge]:
        return lambda **_options: self._bridge

    async def evict(self, eio_sid: str, *, abort: bool = False) -> None:
        """As :meth:`AsyncServer.evict`, on a sync connection (its close runs the
        disconnect handlers, which call back into this loop: in a thread)."""
        socket = self.eio.sockets.get(eio_sid)
        if socket is None:
            return
        self._evicting.add(eio_sid)
        self._bridge.flush()
        try:
            # the sync close puts the writer's end mark itself: its writer closes the
            # websocket, which ends the reader
            await in_thread(socket.close, False, abort, self.reason.TRANSPORT_CLOSE)
        finally:
            self._evicting.discard(eio_sid)
            self.eio.sockets.pop(eio_sid, None)

    async def _close_transports(self) -> None:
        self._bridge.flush()
        for socket in list(self.eio.sockets.values()):
            try:
                await in_thread(socket.close, False, True, self.reason.TRANSPORT_CLOSE)
            except Exception:  # one broken connection does not keep the others open
                logger.exception("could not close connection %s at shutdown", socket.sid)
        self.eio.sockets.clear()
