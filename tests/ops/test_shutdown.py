"""SIGTERM of a process running the README's app, as its framework runs it, with websocket
clients connected: it exits within 5 s, and every client recovers on the next process on
the same store (a SQLite file, a PostgreSQL database).

aiohttp's ``web.run_app`` waits for open websockets (up to 60 s) after its ``on_shutdown``
signal: ``sio.attach(app)`` registers the save-and-close there. Under uvicorn the
``durable_adapter.ASGIApp`` runs it at the lifespan shutdown.
"""

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
from tests._harness import WAIT
from tests._redis import redis_url
from tests.cluster.harness import free_port, listening

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 5
EXIT_WITHIN = 5.0  # seconds from SIGTERM to the process's exit (issue 11)


@asynccontextmanager
async def app_process(kind: str, store: str, *args: str) -> AsyncIterator[
        tuple[asyncio.subprocess.Process, str]]:
    """The shutdown app in its own process; yields it and its URL once it serves."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.ops.shutdown_app", kind, store, str(port), *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.strip() == b"ready", f"{kind} app exited before serving"
        await listening(port)  # started is not listening yet
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


class Member:
    """A websocket client in the app's lobby: what it received, and its identity."""

    def __init__(self) -> None:
        self.client = durable_adapter.AsyncClient(reconnection=False)
        self.chat: list[str] = []
        self.arrived = asyncio.Event()
        self.client.on("chat", self._chat)

    def _chat(self, text: str) -> None:
        self.chat.append(text)
        self.arrived.set()

    async def connect(self, url: str, transport: str = "websocket") -> None:
        await asyncio.wait_for(self.client.connect(url, transports=[transport],
                                                   wait_timeout=WAIT), WAIT)

    async def receive(self, text: str) -> None:
        while text not in self.chat:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), WAIT)

    async def dropped(self) -> None:
        """Until the client has seen its connection end (handlers of what it read run)."""
        await asyncio.wait_for(self.client.wait(), WAIT)

    def come_back_as(self) -> Member:
        """A new client carrying this one's pid and offset."""
        successor = Member()
        successor.client.load_recovery_state(self.client.recovery_state())
        successor.chat = list(self.chat)
        return successor


@pytest.mark.parametrize("kind", ["aiohttp", "uvicorn"])
async def test_sigterm_saves_sessions_and_exits(kind: str, database_url: str) -> None:
    await asyncio.wait_for(migrate(database_url), WAIT)  # what a deployment runs first
    await sigterm_then_recover(kind, database_url)


@pytest.mark.parametrize("kind", ["aiohttp", "uvicorn"])
async def test_sigterm_saves_sessions_and_exits_on_redis(kind: str) -> None:
    await sigterm_then_recover(kind, redis_url())


async def sigterm_then_recover(kind: str, store: str) -> None:
    """SIGTERM with websocket clients connected: the process exits within
    ``EXIT_WITHIN`` and every client recovers on the next process, each event once."""
    members = [Member() for _ in range(CLIENTS)]
    async with app_process(kind, store) as (process, url):
        await asyncio.gather(*(member.connect(url) for member in members))
        await members[0].client.emit("shout", "before")
        await asyncio.gather(*(member.receive("before") for member in members))
        sids = [member.client.get_sid() for member in members]
        # stored, perhaps not delivered yet when the signal lands: sent live or replayed
        assert await members[0].client.call("shout", "late", timeout=WAIT)
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), EXIT_WITHIN)
        except TimeoutError:
            pytest.fail(f"{kind} app still running {EXIT_WITHIN} s after SIGTERM")
        # uvicorn re-raises the signal once it has shut down gracefully
        assert process.returncode in ((0, -signal.SIGTERM) if kind == "uvicorn" else (0,))
        await asyncio.gather(*(member.dropped() for member in members))

    successors = [member.come_back_as() for member in members]
    async with app_process(kind, store) as (_process, url):
        witness = Member()  # a newcomer speaks while they are away: replayed to them
        await witness.connect(url)
        assert await witness.client.call("shout", "while away", timeout=WAIT)
        await witness.client.disconnect()
        await asyncio.gather(*(successor.connect(url) for successor in successors))
        for successor, sid in zip(successors, sids, strict=True):
            assert successor.client.is_recovered()
            assert successor.client.get_sid() == sid
        # rooms came back with the session: the lobby reaches every one of them
        await successors[0].client.emit("shout", "after")
        await asyncio.gather(*(successor.receive("after") for successor in successors))
        for successor in successors:
            # each event once, in order: saved at exactly what it was sent
            assert successor.chat == ["before", "late", "while away", "after"]
            await successor.client.disconnect()


async def test_uvicorn_saves_what_is_still_open_at_the_lifespan_shutdown(tmp_path: Path) -> None:
    """uvicorn closes websockets itself, but an HTTP long-polling socket outlives its
    connections: only ``sio.shutdown()`` at the lifespan shutdown saves it."""
    store = f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
    members = [Member() for _ in range(2)]
    # a short ping interval: a pending poll (which holds uvicorn's exit) ends within 1 s
    async with app_process("uvicorn", store, "1") as (process, url):
        await asyncio.gather(*(member.connect(url, "polling") for member in members))
        assert await members[0].client.call("shout", "before", timeout=WAIT)
        await asyncio.gather(*(member.receive("before") for member in members))
        sids = [member.client.get_sid() for member in members]
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), EXIT_WITHIN)
        except TimeoutError:
            pytest.fail(f"uvicorn app still running {EXIT_WITHIN} s after SIGTERM")
        await asyncio.gather(*(member.dropped() for member in members))

    successors = [member.come_back_as() for member in members]
    async with app_process("uvicorn", store, "1") as (_process, url):
        await asyncio.gather(*(successor.connect(url, "polling") for successor in successors))
        for successor, sid in zip(successors, sids, strict=True):
            assert successor.client.is_recovered()
            assert successor.client.get_sid() == sid
            # without waiting for its pending poll: the process is killed next
            await asyncio.wait_for(successor.client.eio.disconnect(abort=True), WAIT)
