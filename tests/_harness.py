"""Running a durable_adapter server on 127.0.0.1 inside a test, and dropping transports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import engineio.async_client
from aiohttp import web

import durable_adapter

WAIT = 10.0  # seconds any single expected event may take


@asynccontextmanager
async def serving_app(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp ``app`` on an ephemeral port of 127.0.0.1; yields its URL."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serving(sio: durable_adapter.AsyncServer, app: web.Application | None = None
                  ) -> AsyncIterator[str]:
    """Serve ``sio`` (on ``app``, else a new one) on an ephemeral port; yields its URL;
    shuts the server down after."""
    app = app or web.Application()
    sio.attach(app)
    async with serving_app(app) as url:
        try:
            yield url
        finally:
            await sio.shutdown()


async def drop_transport(client: Any) -> None:
    """Close the client's transport abruptly, as a network loss would (no DISCONNECT)."""
    eio = client.eio
    if eio.current_transport == "websocket":
        await eio.ws.close()
    else:
        # long-polling: make the next request fail by closing the HTTP session
        await eio.http.close()


async def until(condition: Callable[[], bool], what: str | Callable[[], str],
                within: float = WAIT) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` (or what it returns at that
    moment) after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {within}s waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.02)


async def settle_handlers(client: Any) -> None:
    """Once ``client``'s transport is down: wait for the handlers of what it already read.

    python-engineio runs each received message in a task of its own (kept in its module's
    ``task_reference_holder``), so events that arrived just before a drop are still being
    handled, each moving the client's offset. The read loop has ended, so no new task of
    this client can appear: waiting for the tasks pending now is enough.
    """
    await asyncio.wait_for(client.eio.wait(), WAIT)
    pending = [task for task in engineio.async_client.task_reference_holder
               if not task.done() and task is not asyncio.current_task()]
    if pending:
        _, late = await asyncio.wait(pending, timeout=WAIT)
        assert not late, f"{len(late)} event handlers still running after {WAIT}s"


class Inbox:
    """Collects what a client's handlers receive, with waits bounded by WAIT."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def put(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait_for(self, count: int, within: float = WAIT) -> list[Any]:
        async def _wait() -> None:
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), within)
        return self.items
