"""``durable-adapter demo --workers 2``: processes sharing one port and one SQLite file."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa

import durable_adapter
from durable_adapter.stores.sql.schema import sessions
from tests._harness import WAIT, Inbox, drop_transport, until

REPO = Path(__file__).resolve().parents[2]


async def _say(base: str, text: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            f"{base}/say", json={"text": text, "name": "server"},
            timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
        assert response.status == 200, await response.text()


def _stored_sids(database: Path) -> set[str]:
    """The sids whose session is in the store (what a dropped socket's worker writes)."""
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            return set(connection.scalars(sa.select(sessions.c.sid)))
    finally:
        engine.dispose()


async def test_clients_recover_on_whichever_worker_they_land(tmp_path: Path) -> None:
    database = tmp_path / "workers.db"
    store = f"sqlite+aiosqlite:///{database}"
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "durable_adapter", "demo", "--workers", "2", "--port", "0",
        "--store", store, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert demo.stdout is not None
        line = (await asyncio.wait_for(demo.stdout.readline(), 60)).decode()
        match = re.search(r"(http://[^/\s]+)/\?transports=websocket", line)
        assert match, f"no URL in {line!r}"
        base = match.group(1)

        # several clients: the kernel spreads their connections over both workers
        clients: list[tuple[durable_adapter.AsyncClient, Inbox]] = []
        for _ in range(6):
            client = durable_adapter.AsyncClient(reconnection=False)
            inbox = Inbox()
            client.on("message", lambda msg, box=inbox: box.put(msg["text"]))
            await client.connect(base, transports=["websocket"], wait_timeout=WAIT)
            clients.append((client, inbox))
        await _say(base, "first")
        for _, inbox in clients:
            await inbox.wait_for(1)

        states: list[dict[str, Any]] = []
        sids = [client.get_sid() for client, _ in clients]
        for client, _ in clients:
            await drop_transport(client)
            await asyncio.wait_for(client.eio.disconnect(abort=True), WAIT)
            states.append(client.recovery_state())
        # both workers notice the drops and save the sessions (written only then: a
        # recovery claims and removes them)
        await until(lambda: set(sids) <= _stored_sids(database), "the six sessions stored")
        await _say(base, "while away")

        for (_, inbox), state, sid in zip(clients, states, sids, strict=True):
            again = durable_adapter.AsyncClient(reconnection=False)
            again.on("message", lambda msg, box=inbox: box.put(msg["text"]))
            again.load_recovery_state(state)
            await again.connect(base, transports=["websocket"], wait_timeout=WAIT)
            assert again.is_recovered() and again.get_sid() == sid
            assert await inbox.wait_for(2) == ["first", "while away"]
            await again.disconnect()
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(demo.wait(), 30)
        except TimeoutError:
            demo.kill()
            await demo.wait()
    assert demo.returncode == 0
    json.dumps(states)  # the recovery state is plain data a client can persist
