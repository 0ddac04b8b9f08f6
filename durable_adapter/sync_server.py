"""``Server``: python-socketio's sync server with durable connection state recovery.

One core, two faces. This server is python-socketio's ``socketio.Server`` towards the
web server and the application (its Engine.IO server, WSGI app, threads and sync
handlers), and :class:`~._sync_core.SyncCore`, the :class:`~.server.AsyncServer` itself,
inside: the stores, the follower, the session writer, the lease and the restores run
on one asyncio event loop in a thread of its own (:class:`~._loop_thread.LoopThread`),
started with the server and stopped by :meth:`Server.shutdown`. Every Socket.IO packet
the sync Engine.IO server receives is handed to the core; every public call blocks the
calling thread until the core is done with it.
"""

from __future__ import annotations

import concurrent.futures
import copy
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

import socketio

from . import _socketio
from ._loop_thread import LoopThread, in_thread
from ._recovery import RecoveryFailure, RecoveryOptions
from .exceptions import ConfigurationError
from .server import _DEFAULTS, RecoveryOption
from .stores import Store

logger = logging.getLogger(__name__)

#: the async modes the sync server recovers in: its core's loop needs a real OS thread,
#: and sends from that thread need a thread-safe queue (eventlet and gevent give neither)
SUPPORTED_ASYNC_MODES = ("threading",)
#: emits a thread may have handed to the core and not yet seen committed; past it, an
#: emit waits for the oldest (memory stays bounded when the store is slower)
MAX_PENDING_EMITS = 1000


def check_async_mode(async_mode: str | None) -> None:
    """Refuse, in one line, what the sync server cannot recover in."""
    if async_mode not in SUPPORTED_ASYNC_MODES:
        raise ConfigurationError(
            f"durable_adapter.Server recovers with async_mode='threading' only (Werkzeug, "
            f"gunicorn --threads, simple-websocket), not {async_mode!r}; use "
            f"durable_adapter.AsyncServer for an asyncio app")
    if _green_threads():
        raise ConfigurationError(
            "durable_adapter.Server cannot recover in a process that eventlet or gevent "
            "monkey-patched (its loop needs a real OS thread); use async_mode='threading' "
            "without monkey-patching")


def _green_threads() -> bool:
    """True when eventlet or gevent replaced the threading module in this process."""
    import sys

    eventlet = sys.modules.get("eventlet.patcher")
    if eventlet is not None and eventlet.is_monkey_patched("thread"):
        return True
    gevent = sys.modules.get("gevent.monkey")
    return bool(gevent is not None and gevent.is_module_patched("threading"))


class Server(socketio.Server):  # type: ignore[misc]
    """A ``socketio.Server`` whose clients get their state back after a drop.

    The same options and guarantees as :class:`durable_adapter.AsyncServer`: the store is
    asyncio code, run on one event loop in a thread of this server's own; handlers run
    in threads, as python-socketio runs them under ``async_mode='threading'``, the only
    mode this server recovers in (it refuses ``eventlet`` and ``gevent``).

    :param store: a store URL (``memory://``, ``sqlite+aiosqlite:///app.db``,
        ``postgresql+asyncpg://...``, ``redis://...``) or a
        :class:`~durable_adapter.Store`. Default: SQLite file ``durable_adapter.sqlite3``.
    :param connection_state_recovery: a :class:`RecoveryOptions`, a dict of its fields,
        or ``True`` (every default); ``None`` or ``False`` turns recovery off (the server
        then is python-socketio's, with no loop thread).

    Example::

        sio = durable_adapter.Server(
            store="sqlite+aiosqlite:///chat.db",
            connection_state_recovery={"max_disconnection_duration": 120},
        )
        app = socketio.WSGIApp(sio)

        @sio.event
        def connect(sid, environ, auth):
            if not sio.is_recovered(sid):
                sio.emit("welcome", to=sid)
    """

    def __init__(self, *args: Any, store: str | Store | None = None,
                 connection_state_recovery: RecoveryOption = _DEFAULTS,
                 **kwargs: Any) -> None:
        """
        :param store: a store URL or a :class:`~durable_adapter.Store` (see above).
        :param connection_state_recovery: a :class:`RecoveryOptions`, a dict of its
            fields or ``True``; ``None`` or ``False`` for python-socketio's behaviour.
        :param args: python-socketio's.
        :param kwargs: python-socketio's; ``async_mode`` must be ``threading`` (the
            default here) with recovery on.
        """
        recovery = RecoveryOptions.from_value(connection_state_recovery)
        self._loop: LoopThread | None = None
        self._core: Any = None
        #: per thread, its emits handed to the core, oldest first (see :meth:`emit`)
        self._emits = threading.local()
        #: held by a shutdown under way: a second caller waits for it (see :meth:`shutdown`)
        self._stopping = threading.Lock()
        if recovery is None:
            super().__init__(*args, **kwargs)
            return
        kwargs.setdefault("async_mode", "threading")
        check_async_mode(kwargs["async_mode"])
        from ._sync_core import SOCKETIO_OPTIONS, SyncCore

        core_options = {name: kwargs[name] for name in SOCKETIO_OPTIONS if name in kwargs}
        if args:
            raise ConfigurationError("durable_adapter.Server takes python-socketio's "
                                     "options by name with recovery on (logger=..., ...)")
        if kwargs.get("client_manager") is not None:
            raise ConfigurationError(
                "client_manager cannot be combined with connection state recovery: "
                "the store is the message queue (pass store= instead)")
        super().__init__(**kwargs)
        self._core = SyncCore(self, store=store, connection_state_recovery=recovery,
                              **core_options)
        self.manager = self._core.manager
        self.manager_initialized = True
        self._loop = LoopThread("durable_adapter-loop")

    # -- what recovery adds --------------------------------------------------------

    @property
    def recovery(self) -> RecoveryOptions | None:
        return None if self._core is None else self._core.recovery

    @property
    def store(self) -> Store:
        store: Store = self._core_().store
        return store

    @property
    def core(self) -> Any:
        """The :class:`~durable_adapter.AsyncServer` that does the work, on the loop
        thread (for tests and metrics; call it through :meth:`run` from other threads)."""
        return self._core_()

    def is_recovered(self, sid: str, namespace: str | None = None) -> bool:
        """True when ``sid`` got its state back on its latest connection."""
        return self._core is not None and bool(self._core.is_recovered(sid, namespace))

    def recovery_failure(self, sid: str, namespace: str | None = None
                         ) -> RecoveryFailure | None:
        """Why ``sid``'s client asked to recover and got a fresh session, else None."""
        if self._core is None:
            return None
        failure: RecoveryFailure | None = self._core.recovery_failure(sid, namespace)
        return failure

    def open_store(self) -> None:
        """Open the store, check its tables and start following it now, instead of at
        the first connection (see :meth:`AsyncServer.open_store`)."""
        if self._core is not None:
            self._run(self._core.open_store())

    def ready(self) -> Any:
        """A readiness answer (see :meth:`AsyncServer.ready`)."""
        if self._core is None:
            from . import readiness

            return readiness.Readiness(True, "ready: recovery is off")
        return self._run(self._core.ready())

    def run(self, coro: Any) -> Any:
        """Run a coroutine of the core on its loop and return its result."""
        return self._run(coro)

    # -- python-socketio's API, done by the core ---------------------------------

    def emit(self, event: str, data: Any = None, to: Any = None, room: Any = None,
             skip_sid: Any = None, namespace: str | None = None, callback: Any = None,
             ignore_queue: bool = False, volatile: bool = False) -> None:
        """python-socketio's ``emit``. ``volatile=True`` sends it live only (no replay).

        It returns once the packet is handed to the core, in this thread's order (as
        python-socketio's returns once it is queued); clients get it once it is
        committed. This thread's next call of any other method, and the end of the
        handler that emitted it (before its ack goes out), wait until its emits are
        committed and handed to this node's sockets: a handler's emits are out when it
        returns, as with :class:`AsyncServer`. :meth:`flush` waits for them explicitly
        and raises the first that failed (a failure is logged in any case).
        """
        if self._core is None:
            super().emit(event, data, to=to, room=room, skip_sid=skip_sid,
                         namespace=namespace, callback=callback, ignore_queue=ignore_queue)
            return
        assert self._loop is not None
        pending = self._pending_emits()
        while len(pending) >= MAX_PENDING_EMITS:
            _outcome(pending.pop(0))
        future = self._loop.submit(self._core.emit(
            event, data, to=to, room=room, skip_sid=skip_sid, namespace=namespace,
            callback=_in_thread(callback), ignore_queue=ignore_queue, volatile=volatile))
        future.add_done_callback(_log_failure)
        pending.append(future)

    def flush(self) -> None:
        """Wait until every emit this thread made is committed and handed to this node's
        sockets.

        :raises Exception: the first of them that failed (say, :class:`StoreError`).
        """
        if self._core is None:
            return
        first: BaseException | None = None
        pending = self._pending_emits()
        while pending:
            error = _outcome(pending.pop(0))
            first = first or error
        if first is not None:
            raise first

    def enter_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        """python-socketio's; returns once the socket's stored session has the room."""
        if self._core is None:
            super().enter_room(sid, room, namespace=namespace)
            return
        self._run(self._core.enter_room(sid, room, namespace=namespace))

    def leave_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        """python-socketio's; returns once the socket's stored session lost the room."""
        if self._core is None:
            super().leave_room(sid, room, namespace=namespace)
            return
        self._run(self._core.leave_room(sid, room, namespace=namespace))

    def close_room(self, room: str, namespace: str | None = None) -> None:
        if self._core is None:
            super().close_room(room, namespace=namespace)
            return
        self._run(self._core.close_room(room, namespace=namespace))

    def rooms(self, sid: str, namespace: str | None = None) -> list[str]:
        if self._core is None:
            rooms: list[str] = super().rooms(sid, namespace=namespace)
            return rooms
        core = self._core

        async def read() -> list[str]:  # on the loop: the rooms change there
            found: list[str] = core.rooms(sid, namespace=namespace)
            return found

        return self._run(read())  # type: ignore[no-any-return]

    def get_session(self, sid: str, namespace: str | None = None) -> Any:
        """python-socketio's: a copy of the session (change it, then :meth:`save_session`,
        or use :meth:`session`); the loop thread reads the stored one at any time."""
        if self._core is None:
            return super().get_session(sid, namespace=namespace)
        core = self._core

        async def read() -> Any:  # copied on the loop, where the session changes
            return copy.deepcopy(await core.get_session(sid, namespace=namespace))

        return self._run(read())

    def save_session(self, sid: str, session: Any, namespace: str | None = None) -> None:
        """python-socketio's; returns once the session is committed. A copy is stored:
        the caller's later changes to ``session`` need another save.

        :raises SessionDataError: the session holds what the store cannot keep.
        """
        if self._core is None:
            super().save_session(sid, session, namespace=namespace)
            return
        self._run(self._core.save_session(sid, copy.deepcopy(session), namespace=namespace))

    def disconnect(self, sid: str, namespace: str | None = None,
                   ignore_queue: bool = False) -> None:
        """Disconnect ``sid`` for good: its stored session, if any, is deleted too."""
        if self._core is None:
            super().disconnect(sid, namespace=namespace, ignore_queue=ignore_queue)
            return
        self._run(self._core.disconnect(sid, namespace=namespace, ignore_queue=ignore_queue))

    def shutdown(self) -> None:
        """Save every live socket's session, close their transports (their clients
        reconnect elsewhere and recover), then stop the loop thread. Idempotent."""
        if self._core is None:
            super().shutdown()
            return
        assert self._loop is not None
        with self._stopping:  # a second caller returns once the first one is done
            if self._loop.running:
                try:
                    self._run(self._core.shutdown())
                finally:
                    self._loop.stop()

    def shutdown_on_signal(self, signum: int = signal.SIGTERM) -> None:
        """At ``signum``, start :meth:`shutdown` in a thread of its own, then run the
        handler that was there before. Call it from the main thread.

        Under gunicorn, in ``post_worker_init``: gunicorn's own SIGTERM handler stops
        accepting and waits for the open requests, which a websocket never ends by
        itself; a ``worker_exit`` hook runs only once that wait is over, when the master
        kills the worker (both wait ``graceful_timeout``). With this, the sessions are
        saved and the websockets closed as soon as the signal comes, and the worker
        exits well before.
        """
        previous = signal.getsignal(signum)

        def handle(sig: int, frame: Any) -> None:
            threading.Thread(target=self.shutdown, name="durable_adapter-shutdown",
                             daemon=True).start()
            if callable(previous):
                previous(sig, frame)

        signal.signal(signum, handle)

    # -- Engine.IO's events, handed to the core ----------------------------------

    def _handle_eio_connect(self, eio_sid: str, environ: Any) -> Any:
        if self._core is None:
            return super()._handle_eio_connect(eio_sid, environ)
        assert self._loop is not None
        if not self._loop.running:
            return False  # shut down: no new connection
        return self._run(self._core._handle_eio_connect(eio_sid, environ))

    def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if self._core is None:
            super()._handle_eio_message(eio_sid, data)
            return
        self._run(self._core._handle_eio_message(eio_sid, data))

    def _handle_eio_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        if self._core is None:
            super()._handle_eio_disconnect(eio_sid, reason)
            return
        assert self._loop is not None
        if not self._loop.running:
            return  # shut down: the sessions were saved before the loop stopped
        coro = self._core._handle_eio_disconnect(eio_sid, reason)
        if self._loop.in_loop():
            # a send from the loop found its connection timed out and closed it
            # inline: handled next on the loop, which must not wait for itself
            self._loop.submit(coro)
            return
        self._run(coro)

    # -- helpers -----------------------------------------------------------------

    def _core_(self) -> Any:
        if self._core is None:
            from .exceptions import DurableAdapterError

            raise DurableAdapterError("connection state recovery is off")
        return self._core

    def _run(self, coro: Any) -> Any:
        assert self._loop is not None
        self._settle()
        return self._loop.call(coro)

    def _pending_emits(self) -> list[concurrent.futures.Future[Any]]:
        pending: list[concurrent.futures.Future[Any]] | None = getattr(
            self._emits, "pending", None)
        if pending is None:
            pending = self._emits.pending = []
        return pending

    def _settle(self) -> None:
        """Wait for this thread's emits (their failures were logged): what a thread
        does after an emit happens after it, as with an awaited emit."""
        pending = self._pending_emits()
        if self._loop is not None and self._loop.in_loop():
            return
        while pending:
            _outcome(pending.pop(0))


def _outcome(future: concurrent.futures.Future[Any]) -> BaseException | None:
    """Wait for a handed emit; its exception, if it failed."""
    try:
        future.result()
    except BaseException as exc:  # logged by _log_failure; returned for flush()
        return exc
    return None


def _log_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("an emit failed: %s", future.exception(),
                     exc_info=future.exception(), extra={"action": "emit_failed"})


def _in_thread(callback: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """An ack callback of the application, run in a thread (never on the loop)."""
    if callback is None:
        return None

    async def run(*args: Any) -> None:
        await in_thread(callback, *args)

    return run


_socketio.check_sync_server_surface()
