"""The sync server as users deploy it: gunicorn, several worker processes (``gthread``),
``--preload`` (the server is built before the fork), one SQLite file; emits from another
process through ``durable_adapter.Emitter``; a restart of the whole server, whose workers
save their sessions when told to stop (``gunicorn_conf.py``, as docs/sync.md shows)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import BinaryIO

import pytest

import durable_adapter
from durable_adapter.migrate import migrate
from durable_adapter.stores.sql.schema import PREFIX
from tests.cluster.harness import ROOT, free_port, listening
from tests.interop.jsclient import JsClient, js_client

WORKERS = 2
START_WAIT = 30.0  # seconds gunicorn may take to import the app and listen (loaded CI)
STOP_WAIT = 20.0  # seconds gunicorn may take to stop its workers (each saves first)
GRACEFUL = 10  # gunicorn's --graceful-timeout: the master kills workers still alive then

needs_node = pytest.mark.usefixtures("js_client_installed")


@asynccontextmanager
async def gunicorn(store: str, port: int, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """gunicorn serving ``tests.sync.gunicorn_app`` on ``port``, stopped with SIGTERM at
    exit; its output goes to ``log``, printed when the block fails."""
    with appending(log) as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gunicorn", "-c", "tests/sync/gunicorn_conf.py",
            "-w", str(WORKERS), "--threads", "50", "--preload", "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", str(GRACEFUL), "--no-control-socket",
            "tests.sync.gunicorn_app:app", cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "SYNC_STORE": store},
            stdout=out, stderr=asyncio.subprocess.STDOUT)
    try:
        await listening(port, START_WAIT)
        yield process
    except BaseException:
        print(f"gunicorn's output ({log}):\n{tail(log)}")
        raise
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_WAIT)
            except TimeoutError:
                process.kill()
                await process.wait()


def appending(path: Path) -> BinaryIO:
    return open(path, "ab")


def tail(path: Path, size: int = 5000) -> str:
    return path.read_text(errors="replace")[-size:]


def stored_sessions(db: Path) -> list[tuple[str, str | None]]:
    """``(sid, owner)`` of every stored session: an owner is the node whose socket was
    live with it (None once saved as disconnected)."""
    with closing(sqlite3.connect(db)) as connection:
        rows: list[tuple[str, str | None]] = connection.execute(
            f"SELECT sid, owner FROM {PREFIX}sessions").fetchall()
    return rows


def leases(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as connection:
        return [row[0] for row in connection.execute(f"SELECT id FROM {PREFIX}nodes")]


def ticks(js: JsClient) -> list[int]:
    return [line["args"][0] for line in js.events("tick")]


@needs_node
async def test_js_client_recovers_across_gunicorn_workers_and_a_restart(
        tmp_path: Path) -> None:
    db = tmp_path / "gunicorn.db"
    store = f"sqlite+aiosqlite:///{db}"
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
            async with gunicorn(store, port, tmp_path / "gunicorn.log"):
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
            # gunicorn stopped (SIGTERM): each worker saved its sessions when told to
            # stop, not once gunicorn's graceful wait was over (it was killed then)
            await js.wait_line("disconnect", start)
            assert stored_sessions(db) == [(sid, None)] and leases(db) == []
            await emit(5)
            async with gunicorn(store, port, tmp_path / "gunicorn.log"):
                await js.send("connect")
                again = await js.wait_connects(5)
                assert again["id"] == sid and again["recovered"], js.describe()
                await js.wait_events(sent, "tick")
                assert ticks(js) == list(range(sent))
                start = js.mark()
            # a worker that had one connection all along waits for it (gunicorn's count
            # of the open requests) until it is closed by the shutdown
            await js.wait_line("disconnect", start)
            assert stored_sessions(db) == [(sid, None)] and leases(db) == []
    finally:
        await emitter.close()
