"""What ``durable_adapter.Server`` accepts at construction, and its loop thread's life."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from typing import Any

import pytest
import socketio

import durable_adapter
from durable_adapter import ConfigurationError

LOOP_THREAD = "durable_adapter-loop"
CHILD_WAIT = 20.0  # seconds a forked child may take to emit and shut down


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOOP_THREAD]


@pytest.mark.parametrize("mode", ["eventlet", "gevent", "gevent_uwsgi"])
def test_green_thread_modes_are_refused_in_one_line(mode: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        durable_adapter.Server(store="memory://", async_mode=mode)
    message = str(refused.value)
    assert "\n" not in message and "'threading'" in message and repr(mode) in message
    assert not loop_threads()


def test_client_manager_is_refused_with_recovery_on() -> None:
    with pytest.raises(ConfigurationError, match="store="):
        durable_adapter.Server(store="memory://", client_manager=socketio.Manager())


def test_recovery_off_is_python_socketio_with_no_loop_thread() -> None:
    sio = durable_adapter.Server(connection_state_recovery=None)
    assert sio.recovery is None and not loop_threads()
    assert not sio.is_recovered("any")
    sio.shutdown()


def test_shutdown_stops_the_loop_thread_and_later_calls_fail_at_once() -> None:
    sio = durable_adapter.Server(store="memory://")
    assert len(loop_threads()) == 1
    sio.emit("news", 1)  # nobody listens: stored, then delivered to no one
    sio.shutdown()
    sio.shutdown()  # idempotent
    assert not loop_threads()
    with pytest.raises(RuntimeError, match="shut down"):
        sio.emit("news", 2)


def _emit_and_shut_down(sio: durable_adapter.Server) -> None:
    sio.emit("news", 1)  # would wait forever on the parent's loop, dead in this child
    sio.shutdown()


def test_a_process_forked_after_construction_runs_its_own_loop() -> None:
    sio = durable_adapter.Server(store="memory://")
    try:
        child = multiprocessing.get_context("fork").Process(
            target=_emit_and_shut_down, args=(sio,))
        child.start()
        child.join(CHILD_WAIT)
        if child.is_alive():
            child.kill()
            child.join()
            pytest.fail("the forked child hung calling into the server")
        assert child.exitcode == 0
    finally:
        sio.shutdown()


def test_shutdown_on_signal_shuts_down_then_runs_the_previous_handler() -> None:
    """What gunicorn's SIGTERM handler of a worker is, stood in for by SIGUSR2: it still
    runs, after the shutdown started in a thread of its own (it waits for nothing)."""
    ran = threading.Event()

    def previous(signum: int, frame: Any) -> None:
        ran.set()

    before = signal.signal(signal.SIGUSR2, previous)
    sio = durable_adapter.Server(store="memory://")
    try:
        sio.shutdown_on_signal(signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert ran.wait(CHILD_WAIT)
        for thread in loop_threads():
            thread.join(CHILD_WAIT)
        assert not loop_threads()
        with pytest.raises(RuntimeError, match="shut down"):
            sio.emit("news", 1)
    finally:
        signal.signal(signal.SIGUSR2, before)
        sio.shutdown()
