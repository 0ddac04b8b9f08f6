"""Emit from a process that runs no Socket.IO server: a Celery job, a cron script, a web
request handler elsewhere.

An :class:`AsyncEmitter` appends to the same store as the servers, through the store's
own ``append``, so its packets get offsets in commit order among every server's, every
node delivers them in that order through its follower, and a client that was away
replays them. Volatile emits and the operations on remote sockets (disconnect, rooms,
room-wide joins, leaves and disconnects) travel as the servers' own control messages
(:mod:`._control`). :class:`Emitter` wraps one for synchronous code.

The names follow python-socketio (``Server``/``AsyncServer``): the plain name is the
synchronous class. Until 0.x ``Emitter`` was the async one and ``SyncEmitter`` the sync
one; ``SyncEmitter`` stays as a deprecated alias of :class:`Emitter`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, NoReturn

from . import _control as control
from ._codec import Codec
from ._packets import as_args, as_rooms, check_sendable, packet_class_for
from .exceptions import ConfigurationError
from .stores import Store, store_from_url
from .stores.base import NewPacket
from .stores.urls import store_scheme

CALL_TIMEOUT = 60.0  # seconds an Emitter call may take (a store that is down)


class AsyncEmitter:
    """Emits into a store from outside any server; nothing is served or followed.

    :param store: a store URL (``postgresql+asyncpg://...``, ``sqlite+aiosqlite:///...``,
                  ``redis://...``, ``mongodb://...``) or a :class:`Store`. The emitter
                  opens it on first use and closes it in :meth:`close`.
    :param json: the JSON module the servers were given (python-socketio's ``json=``),
                 for payloads the standard ``json`` cannot encode (a ``datetime`` the
                 module's ``dumps`` turns into text). None: the standard library's.

    Usage::

        async with durable_adapter.AsyncEmitter("postgresql+asyncpg://app@db/app") as emitter:
            await emitter.emit("order", {"id": 7}, to="user:42")
            await emitter.sockets_join("orders", room="user:42")

    Packets go to namespaces where the servers recover state (only those are stored); in a
    namespace without recovery use ``volatile=True``: servers do not deliver stored
    packets there.
    """

    def __init__(self, store: Store | str, *, json: Any = None) -> None:
        if isinstance(store, str):
            if store_scheme(store) == "memory":
                raise ConfigurationError(
                    "memory:// is a history of one process: an Emitter needs the servers' "
                    "store (SQL, Redis or MongoDB)")
            store = store_from_url(store)
        if not isinstance(store, Store):
            raise ConfigurationError(f"store must be a URL or a Store, got {store!r}")
        if json is not None:
            store.codec = Codec(json)
        self.store = store
        #: what the servers send packets with, to refuse what they could not send
        self._packet_class = packet_class_for(json)
        #: the origin of this emitter's control messages (never a server's id)
        self.host_id = f"emitter-{uuid.uuid4().hex}"
        self._opened = False
        self._open_lock = asyncio.Lock()

    async def open(self) -> None:
        """Connect to the store; done by the first call if not before."""
        if self._opened:
            return
        async with self._open_lock:
            if not self._opened:
                await self.store.open()
                self._opened = True

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await self.store.close()

    async def __aenter__(self) -> AsyncEmitter:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- emits -----------------------------------------------------------------

    async def emit(self, event: str, data: Any = None, to: Any = None, room: Any = None,
                   skip_sid: Any = None, namespace: str = "/", volatile: bool = False
                   ) -> int | None:
        """Emit as ``sio.emit`` does; returns the packet's seq (None when volatile).

        ``data`` a tuple means several arguments; ``to``/``room`` a room, a sid or a list
        of them (none: the whole namespace); ``skip_sid`` rooms or sids to leave out.
        Returns once the packet is stored: every node then delivers it in offset order.
        """
        if not isinstance(event, str):
            raise TypeError(f"event must be a str, got {type(event).__name__}")
        args = as_args(data)
        rooms, except_rooms = as_rooms(to or room), as_rooms(skip_sid)
        await self.open()
        if volatile:  # live only: every node sends it to its matching sockets, if any
            await self._publish(control.EmitLive(namespace=namespace, event=event, args=args,
                                                 rooms=rooms, except_rooms=except_rooms))
            return None
        check_sendable(namespace, [event, *args], self._packet_class)
        return await self.store.append(NewPacket(
            namespace=namespace, data=[event, *args], rooms=rooms, except_rooms=except_rooms))

    async def send(self, data: Any, to: Any = None, room: Any = None, skip_sid: Any = None,
                   namespace: str = "/") -> int | None:
        """A ``message`` event, as ``sio.send``."""
        return await self.emit("message", data, to=to, room=room, skip_sid=skip_sid,
                               namespace=namespace)

    # -- sockets held by the servers ---------------------------------------------

    async def disconnect(self, sid: str, namespace: str = "/") -> None:
        """Disconnect ``sid`` wherever it is connected, and forget its stored session:
        a server-side disconnect is not recoverable."""
        await self.open()
        await self._publish(control.Disconnect(sid=sid, namespace=namespace))
        await self.store.delete_sessions([(namespace, sid)])

    async def enter_room(self, sid: str, room: str, namespace: str = "/") -> None:
        """Put the connected socket ``sid`` in ``room``, on whichever node holds it."""
        await self.open()
        await self._publish(control.EnterRoom(sid=sid, namespace=namespace, room=room))

    async def leave_room(self, sid: str, room: str, namespace: str = "/") -> None:
        await self.open()
        await self._publish(control.LeaveRoom(sid=sid, namespace=namespace, room=room))

    async def close_room(self, room: str, namespace: str = "/") -> None:
        """Remove every connected socket from ``room``, on every node."""
        await self.open()
        await self._publish(control.CloseRoom(room=room, namespace=namespace))

    # -- every matching socket, on every node (the JS emitters' socketsJoin, ...) ----

    async def sockets_join(self, rooms: str | list[str], *, room: Any = None,
                           namespace: str = "/") -> None:
        """Put every connected socket of ``namespace`` that is in ``room`` (a room, a
        sid or a list of them; None: every socket) in ``rooms``, on every node, as
        ``io.in(room).socketsJoin(rooms)`` of the JS emitters.

        Each node applies it before any packet emitted after this call returns, and
        writes the sockets' sessions through. A socket that is disconnected (waiting to
        recover) when it runs is left as it was, as in the JS adapters.
        """
        await self.open()
        await self._publish(control.SocketsJoin(namespace=namespace, rooms=as_rooms(room),
                                                join=as_rooms(rooms)))

    async def sockets_leave(self, rooms: str | list[str], *, room: Any = None,
                            namespace: str = "/") -> None:
        """Take every connected socket of ``namespace`` in ``room`` (None: every socket)
        out of ``rooms``, on every node: ``io.in(room).socketsLeave(rooms)``."""
        await self.open()
        await self._publish(control.SocketsLeave(namespace=namespace, rooms=as_rooms(room),
                                                 leave=as_rooms(rooms)))

    async def disconnect_sockets(self, room: Any = None, close: bool = False, *,
                                 namespace: str = "/") -> None:
        """Disconnect every connected socket of ``namespace`` in ``room`` (None: every
        socket), on every node: ``io.in(room).disconnectSockets(close)``. A server-side
        disconnect: their stored sessions are deleted (not recoverable). ``close``:
        close each client's whole connection, every namespace of it, not only this one.
        """
        await self.open()
        await self._publish(control.DisconnectSockets(namespace=namespace,
                                                      rooms=as_rooms(room), close=close))

    async def _publish(self, command: control.Command) -> None:
        await self.store.publish_control(control.to_message(command, origin=self.host_id,
                                                            codec=self.store.codec))


class Emitter:
    """:class:`AsyncEmitter` for synchronous code (Flask, Django, Celery workers).

    The store lives on a private event loop in a background thread; each call waits for
    its result there, so any number of threads may share one Emitter. The thread
    starts at the first call, and again in a forked child (a Celery prefork worker that
    imported a module-level Emitter): a thread does not survive ``fork``, and the
    child opens the store anew: give a URL, or a function that builds the :class:`Store`
    (``lambda: PostgresStore(url, schema="chat")``), rather than a store object.

    :param json: as :class:`AsyncEmitter`'s.
    :param timeout: seconds each call may take.

    Usage::

        emitter = durable_adapter.Emitter("postgresql+asyncpg://app@db/app")
        emitter.emit("order", {"id": 7}, to="user:42")
        emitter.close()

    Each call blocks its thread: in async code use :class:`AsyncEmitter` (this class
    was the async one before; built inside a running event loop, it warns).
    """

    #: warn when built inside a running event loop (``Emitter`` changed meaning)
    _warn_in_loop = True

    def __init__(self, store: Store | str | Callable[[], Store], *, json: Any = None,
                 timeout: float = CALL_TIMEOUT) -> None:
        if self._warn_in_loop and _loop_running():
            warnings.warn(
                "Emitter is now the sync emitter (each call blocks the event loop); "
                "use AsyncEmitter in async code", RuntimeWarning, stacklevel=2)
        self.timeout = timeout
        self._json = json
        self._store_spec = store
        #: the parent's loop, thread and emitter in a forked child, kept unreachable
        #: but alive: finalising them would shut down sockets the parent still uses
        self._inherited: list[object] = []
        self._start_lock = threading.Lock()
        self._pid: int | None = None  # the process whose thread runs the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._emitter: AsyncEmitter | None = None
        self._closed = False
        if isinstance(store, str):
            AsyncEmitter(store)  # a bad URL fails here, not at the first emit

    def _start(self) -> tuple[asyncio.AbstractEventLoop, AsyncEmitter]:
        with self._start_lock:
            if self._closed:
                raise RuntimeError("this Emitter is closed")
            if self._pid != os.getpid():
                if self._pid is not None:  # forked: the parent's thread is not here
                    if isinstance(self._store_spec, Store):
                        raise ConfigurationError(
                            "this Emitter was used before the process forked and holds "
                            "a Store object, whose connections belong to the parent: give "
                            "it a URL or a function that builds the store")
                    self._inherited.append((self._loop, self._thread, self._emitter))
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, daemon=True,
                                          name="durable_adapter Emitter")
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
                self._emitter = asyncio.run_coroutine_threadsafe(
                    self._build(self._store_spec, self._json), loop).result(self.timeout)
            assert self._loop is not None and self._emitter is not None
            return self._loop, self._emitter

    @staticmethod
    async def _build(store: Store | str | Callable[[], Store], json: Any) -> AsyncEmitter:
        # made on the loop that will use it
        return AsyncEmitter(store if isinstance(store, Store | str) else store(), json=json)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        loop, emitter = self._start()
        coroutine = getattr(emitter, method)(*args, **kwargs)
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, loop)
        return future.result(self.timeout)

    def emit(self, event: str, data: Any = None, to: Any = None, room: Any = None,
             skip_sid: Any = None, namespace: str = "/", volatile: bool = False) -> int | None:
        result: int | None = self._call("emit", event, data, to=to, room=room,
                                        skip_sid=skip_sid, namespace=namespace,
                                        volatile=volatile)
        return result

    def send(self, data: Any, to: Any = None, room: Any = None, skip_sid: Any = None,
             namespace: str = "/") -> int | None:
        result: int | None = self._call("send", data, to=to, room=room, skip_sid=skip_sid,
                                        namespace=namespace)
        return result

    def disconnect(self, sid: str, namespace: str = "/") -> None:
        self._call("disconnect", sid, namespace)

    def enter_room(self, sid: str, room: str, namespace: str = "/") -> None:
        self._call("enter_room", sid, room, namespace)

    def leave_room(self, sid: str, room: str, namespace: str = "/") -> None:
        self._call("leave_room", sid, room, namespace)

    def close_room(self, room: str, namespace: str = "/") -> None:
        self._call("close_room", room, namespace)

    def sockets_join(self, rooms: str | list[str], *, room: Any = None,
                     namespace: str = "/") -> None:
        """:meth:`AsyncEmitter.sockets_join`."""
        self._call("sockets_join", rooms, room=room, namespace=namespace)

    def sockets_leave(self, rooms: str | list[str], *, room: Any = None,
                      namespace: str = "/") -> None:
        """:meth:`AsyncEmitter.sockets_leave`."""
        self._call("sockets_leave", rooms, room=room, namespace=namespace)

    def disconnect_sockets(self, room: Any = None, close: bool = False, *,
                           namespace: str = "/") -> None:
        """:meth:`AsyncEmitter.disconnect_sockets`."""
        self._call("disconnect_sockets", room, close, namespace=namespace)

    def close(self) -> None:
        """Close the store and stop the background loop; idempotent."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            loop, thread, emitter = self._loop, self._thread, self._emitter
            if self._pid != os.getpid() or loop is None or thread is None or emitter is None:
                return  # never started in this process: nothing of ours to close
        try:
            asyncio.run_coroutine_threadsafe(emitter.close(), loop).result(self.timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self.timeout)
            if not thread.is_alive():
                loop.close()

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> NoReturn:
        # code written when Emitter was the async class: say so rather than a bare
        # "does not support the asynchronous context manager protocol"
        self.close()
        raise TypeError("Emitter is now the sync emitter: in async code use "
                        "`async with durable_adapter.AsyncEmitter(...)`")

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class SyncEmitter(Emitter):
    """Deprecated: the former name of :class:`Emitter` (the sync emitter)."""

    _warn_in_loop = False  # its users knew it was sync: the rename warning is enough

    def __init__(self, store: Store | str | Callable[[], Store], *, json: Any = None,
                 timeout: float = CALL_TIMEOUT) -> None:
        warnings.warn("SyncEmitter is deprecated: it is now called Emitter (and the async "
                      "one AsyncEmitter)", DeprecationWarning, stacklevel=2)
        super().__init__(store, json=json, timeout=timeout)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
