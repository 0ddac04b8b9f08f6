"""The sync server as users deploy it: gunicorn, several worker processes (``gthread``),
``--preload`` (the server is built before the fork), one SQLite file; emits from another
process through ``durable_adapter.Emitter``; a restart of the whole server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import durable_adapter
from durable_adapter.migrate import migrate
from tests.cluster.harness import ROOT, free_port, listening
from tests.interop.jsclient import JsClient, js_client

WORKERS = 2
STOP_WAIT = 20.0  # seconds gunicorn may take to stop its workers (each saves first)

needs_node = pytest.mark.usefixtures("js_client_installed")


@asynccontextmanager
async def gunicorn(store: str, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gunicorn", "-c", "tests/sync/gunicorn_conf.py",
        "-w", str(WORKERS), "--threads", "50", "--preload", "-b", f"127.0.0.1:{port}",
        "--graceful-timeout", "5", "tests.sync.gunicorn_app:app", cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SYNC_STORE": store},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await listening(port)
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_WAIT)
            except TimeoutError:
                process.kill()
                await process.wait()


def ticks(js: JsClient) -> list[int]:
    return [line["args"][0] for line in js.events("tick")]


@needs_node
async def test_js_client_recovers_across_gunicorn_workers_and_a_restart(
        tmp_path: Path) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path / 'gunicorn.db'}"
    await migrate(store)  # once, before several workers open the file
    port = free_port()
    emitter = durable_adapter.AsyncEmitter(store)
    sent = 0

    async def emit(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            await emitter.emit("tick", sent, to="lobby")
            sent += 1

    try:
        async with js_client(f"http://127.0.0.1:{port}", auth={"user": "ada"},
                             reconnection=False) as js:
            async with gunicorn(store, port):
                await js.send("connect")
                sid = (await js.wait_connects(1))["id"]
                await emit(3)
                await js.wait_events(sent, "tick")
                # each reconnect lands on whichever worker accepts it
                for round_ in range(1, 4):
                    start = js.mark()
                    await js.close_engine()
                    await js.wait_line("disconnect", start)
                    await emit(5)
                    await js.send("connect")
                    again = await js.wait_connects(round_ + 1)
                    assert again["id"] == sid and again["recovered"], js.describe()
                    await js.wait_events(sent, "tick")
                start = js.mark()
            # gunicorn stopped (SIGTERM): each worker saved its sessions at exit
            await js.wait_line("disconnect", start)
            await emit(5)
            async with gunicorn(store, port):
                await js.send("connect")
                again = await js.wait_connects(5)
                assert again["id"] == sid and again["recovered"], js.describe()
                await js.wait_events(sent, "tick")
                assert ticks(js) == list(range(sent))
    finally:
        await emitter.close()
