"""Frames written straight to a socket's websocket, without waking its writer task.

python-engineio sends through a queue per socket: ``send`` puts the packet there and the
socket's writer task wakes, takes it and writes it to the websocket. A fan-out that
commits each packet on its own wakes every recipient's writer once per packet (a task
step, a timer and a future per socket per packet). A packet's frame is the same text for
every recipient, so :class:`DirectWrites` encodes it once and writes it to each socket's
websocket itself where nothing can be ahead of it: the socket is on the websocket
transport, its queue is empty and its writer is parked waiting on it (so it holds no
packet taken from the queue either). Anything else, pings included, goes through the
queue as before, and a packet falls back to the queue whenever a socket is not in that
state; so frames reach each client in the order they were sent, as python-engineio's own
writer would have put them.

It relies on python-engineio's socket internals (``queue`` and its writer parked in
``queue.get()``, ``upgraded``, ``upgrading``, ``closing``, ``closed``, ``last_ping``, the
websocket driver built from ``_async['websocket']`` with the socket's
``_websocket_handler``) and on ``asyncio.Queue``'s list of waiting getters; the writer
loop is the same from python-engineio 4.8 to 4.15. Other versions, logging engine.io
packets (python-engineio logs each send), or an async mode without those drivers: every
packet goes through the queue, as without this module.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections.abc import Coroutine, Generator
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: python-engineio versions whose socket writer this module was checked against
SUPPORTED = ((4, 8), (5, 0))
#: async modes whose websocket driver is wrapped
MODES = ("aiohttp", "asgi")
#: attribute on a python-engineio socket holding its websocket driver
WS_ATTR = "_durable_ws"


def _engineio_supported() -> bool:
    try:
        parts = version("python-engineio").split(".")
        current = (int(parts[0]), int(parts[1]))
    except (PackageNotFoundError, ValueError, IndexError):
        return False
    low, high = SUPPORTED
    return low <= current < high and hasattr(asyncio.Queue(), "_getters")


@types.coroutine
def _finish(coro: Coroutine[Any, Any, Any], pending: Any) -> Generator[Any, Any, Any]:
    """The rest of ``coro``, which stopped on ``pending`` at its first step: whatever
    the task running this sends or throws in goes on to ``coro``, as if it ran it."""
    while True:
        thrown: BaseException | None = None
        try:
            yield pending
        except BaseException as exc:  # forwarded, as a task would
            thrown = exc
        try:
            pending = coro.send(None) if thrown is None else coro.throw(thrown)
        except StopIteration as stop:
            return stop.value


async def _rest(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    return await _finish(coro, pending)


async def _send_frames(sock: Any, frames: list[bytes], opcode: Any) -> None:
    for data in frames:
        await sock.send_frame(data, opcode)


async def _send_texts(ws: Any, frames: list[str]) -> None:
    for frame in frames:
        await ws.send(frame)


class FrameWriter(Protocol):
    """What writes an encoded frame to a socket past python-socketio's send:
    :class:`DirectWrites`, or the sync server's ``SyncFrames``."""

    def active(self) -> bool: ...

    def write(self, eio_sid: str, frame: str, data: bytes) -> bool: ...


class DirectWrites:
    """Writes a frame to a websocket socket with nothing ahead of it, else says no."""

    def __init__(self, eio: Any) -> None:
        self.eio = eio
        #: frames written directly / sends left to python-engineio's queue / direct
        #: writes that had to wait for the transport to drain (finished in a task)
        self.direct = 0
        self.queued = 0
        self.drained = 0
        #: a direct write whose websocket send did not finish at once (flow control)
        self._unfinished: dict[Any, asyncio.Task[Any]] = {}
        #: frames handed over this round, per socket, written by :meth:`_flush`
        self._corked: dict[Any, tuple[Any, list[tuple[str, bytes]]]] = {}
        self._flush_handle: asyncio.Handle | None = None
        #: aiohttp's WebSocketResponse and its text opcode, in aiohttp mode
        self._aiohttp: tuple[Any, Any] | None = None
        self.enabled = _engineio_supported() and self._wrap_driver()

    def _wrap_driver(self) -> bool:
        drivers = getattr(self.eio, "_async", None)
        if getattr(self.eio, "async_mode", None) not in MODES or not isinstance(drivers, dict):
            return False
        driver = drivers.get("websocket")
        if not isinstance(driver, type):
            return False

        class RecordingWebSocket(driver):  # type: ignore[valid-type,misc]
            """python-engineio's websocket driver, recorded on the socket it serves."""

            def __init__(self, handler: Any, server: Any) -> None:
                super().__init__(handler, server)
                owner = getattr(handler, "__self__", None)
                if owner is not None:
                    setattr(owner, WS_ATTR, self)

        # the drivers' dict is shared by every server of that mode: this one gets a copy
        self.eio._async = {**drivers, "websocket": RecordingWebSocket}
        if self.eio.async_mode == "aiohttp":
            from aiohttp import WSMsgType, web

            # what python-engineio's aiohttp driver does for a text frame, minus finding
            # out per call which method to use and encoding the text per socket
            self._aiohttp = (web.WebSocketResponse, WSMsgType.TEXT)
        return True

    def active(self) -> bool:
        """Whether frames may go directly now (python-engineio logs each packet it
        sends at INFO: with that on, everything goes through it)."""
        return self.enabled and not self.eio.logger.isEnabledFor(logging.INFO)

    def writable(self, socket: Any) -> Any:
        """The websocket of ``socket`` when a frame written now would come after all it
        was sent, else None."""
        ws = getattr(socket, WS_ATTR, None)
        if ws is None or not socket.upgraded or socket.upgrading or socket.closing \
                or socket.closed or socket in self._unfinished:
            return None  # (frames corked for it this round are ahead of the queue's)
        queue = socket.queue
        if queue._queue or not queue._getters:
            return None  # something queued, or the writer holds what it took
        last_ping = socket.last_ping
        if last_ping and time.time() - last_ping > self.eio.ping_timeout:
            return None  # python-engineio's send closes it: let it
        return ws

    def write(self, eio_sid: str, frame: str, data: bytes) -> bool:
        """Write ``frame`` (an encoded Engine.IO packet, ``data`` as UTF-8) to
        ``eio_sid``'s websocket if nothing is ahead of it there; False: send it through
        python-engineio instead.

        Frames are written at the end of the loop's current round, each socket's back to
        back (:meth:`_flush`): a handler emitting many packets without yielding does not
        interleave tiny writes across every socket (each its own TCP segment), and it
        returns as soon as it handed them over, as with python-engineio's queue. The
        flush is scheduled before anything queued later can wake a writer, so it still
        goes first.
        """
        socket = self.eio.sockets.get(eio_sid)
        ws = self.writable(socket) if socket is not None else None
        if ws is None:
            self.queued += 1
            return False
        self.direct += 1
        corked = self._corked.get(socket)
        if corked is None:
            corked = self._corked[socket] = (ws, [])
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        corked[1].append((frame, data))
        return True

    def _flush(self) -> None:
        """Write every socket's frames of this round, each socket's in one go."""
        self._flush_handle = None
        corked, self._corked = self._corked, {}
        aiohttp = self._aiohttp
        for socket, (ws, frames) in corked.items():
            sock = getattr(ws, "_sock", None) if aiohttp is not None else None
            if aiohttp is not None and isinstance(sock, aiohttp[0]):
                coro = _send_frames(sock, [data for _, data in frames], aiohttp[1])
            else:
                coro = _send_texts(ws, [frame for frame, _ in frames])
            try:
                pending = coro.send(None)
            except StopIteration:
                continue  # written (the common case: the transport took it all)
            except Exception:
                # the connection is going away: its reader ends and closes the socket,
                # as python-engineio's writer would on a failed send
                logger.debug("direct websocket write failed", exc_info=True)
                continue
            # waiting for the transport to drain: the rest runs in a task, and this
            # socket gets its next frames through the queue until it is done (a frame is
            # written before the wait in aiohttp's and the ASGI servers' websockets)
            self.drained += 1
            task = asyncio.ensure_future(_rest(coro, pending))
            self._unfinished[socket] = task
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        for socket, unfinished in list(self._unfinished.items()):
            if unfinished is task:
                del self._unfinished[socket]
        if not task.cancelled() and task.exception() is not None:
            logger.debug("direct websocket write failed", exc_info=task.exception())
