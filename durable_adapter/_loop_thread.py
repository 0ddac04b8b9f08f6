"""One asyncio event loop in an OS thread of its own, for the sync server's core.

The stores, the follower, the session writer and the lease are asyncio code; a sync
server (threads, Werkzeug, gunicorn ``--threads``) runs them on this loop and calls
into it from its own threads with :meth:`LoopThread.call`, which blocks the calling
thread until the coroutine is done. The loop thread itself never runs application
code: a call made from it would wait for itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

STOP_WAIT = 5.0  # seconds a stopping loop gives its remaining tasks


class LoopThread:
    """An event loop running in a daemon thread, started at construction, and again in
    a child process that was forked after (gunicorn's ``--preload``: a thread does not
    survive a fork, and a call onto the parent's loop would wait forever)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._stopped = False
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _forked(self) -> bool:
        """True (once, the loop restarted) in a process forked since it started."""
        if self._pid == os.getpid() or self._stopped:
            return False
        self._start()
        return True

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self._cancel_remaining()
            self.loop.close()

    def _cancel_remaining(self) -> None:
        tasks = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.wait(tasks, timeout=STOP_WAIT))

    @property
    def running(self) -> bool:
        self._forked()
        return not self._stopped and self._thread.is_alive() and not self.loop.is_closed()

    def in_loop(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.get_ident() == self._thread.ident

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop (in the caller's context); do not wait for it.

        :raises RuntimeError: the loop was stopped (the server shut down).
        """
        if not self.running:
            coro.close()
            raise RuntimeError("the server's event loop has stopped (it was shut down)")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result in this thread.

        :raises RuntimeError: called from the loop's thread (it would wait for itself).
        """
        if self.in_loop():
            coro.close()
            raise RuntimeError("a blocking call into the event loop from its own thread")
        return self.submit(coro).result()

    def stop(self) -> None:
        """Stop the loop (its remaining tasks cancelled) and wait for its thread."""
        if self.running:
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._stopped = True
        if not self.in_loop():
            self._thread.join(STOP_WAIT * 2)


async def in_thread(func: Callable[..., T], *args: Any) -> T:
    """Run ``func(*args)`` in a thread of its own, in a copy of the caller's context
    (what the async server's handlers see of it, these see too), and await it.

    A thread per call, as python-socketio's sync server runs each handler under
    ``threading``: a handler that blocks holds no pool slot another one needs.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = context.run(func, *args)
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
            loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=run, name="durable_adapter-handler", daemon=True).start()
    return await future
