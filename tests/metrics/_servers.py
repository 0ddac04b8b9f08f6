"""An in-process server on a real SQLite store, and clients that drop and recover."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import durable_adapter
from tests._harness import WAIT, Inbox, drop_transport


def sqlite_url(tmp_path: Path, name: str = "metrics.db") -> str:
    return f"sqlite+aiosqlite:///{tmp_path / name}"


def make_server(store: Any, async_mode: str = "aiohttp", **kwargs: Any
                ) -> durable_adapter.AsyncServer:
    return durable_adapter.AsyncServer(
        store=store, async_mode=async_mode,
        connection_state_recovery={"max_disconnection_duration": 30}, **kwargs)


class Client:
    """A recovering client that records ``tick`` events and never reconnects by itself."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.sio = durable_adapter.AsyncClient(reconnection=False)
        self.ticks = Inbox()
        self.sio.on("tick", self.ticks.put)
        if state:
            self.sio.load_recovery_state(state)

    async def connect(self, url: str, auth: Any = None) -> Client:
        await asyncio.wait_for(self.sio.connect(url, transports=["websocket"], auth=auth,
                                                wait_timeout=WAIT), WAIT)
        return self

    async def drop(self, server: durable_adapter.AsyncServer) -> dict[str, Any]:
        """Close the transport abruptly; returns the state a reconnect sends."""
        sid = self.sio.get_sid("/")
        await drop_transport(self.sio)
        deadline = time.monotonic() + WAIT
        while server.manager.is_connected(sid, "/"):
            assert time.monotonic() < deadline, f"{sid} still connected"
            await asyncio.sleep(0.01)
        await self.close()
        return self.sio.recovery_state()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.sio.eio.disconnect(abort=True), WAIT)
        except Exception:
            pass


async def wait_for(condition: Any, what: str, within: float = WAIT) -> None:
    """Until ``condition()`` is true (checked every 10 ms), at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
