"""In-process parts of the start-up check and readiness that the process tests
(``test_startup.py``) cannot single out: whoever answers the ASGI lifespan, the store is
open before ``lifespan.startup.complete``; ``ready()`` answers instead of raising; an app
that runs no start-up hook still opens its store at the first connection."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import durable_adapter
from durable_adapter.demo.app import create_app
from durable_adapter.readiness import aiohttp_handler
from durable_adapter.stores.sql import SQLStore
from tests._harness import WAIT, serving_app


def unmigrated_store(tmp_path: Path) -> SQLStore:
    path = tmp_path / "app.db"
    sqlite3.connect(path).close()
    return SQLStore(f"sqlite:///{path}", auto_migrate=False)


async def lifespan_startup(app: Any) -> list[dict[str, Any]]:
    """What ``app`` sends for a ``lifespan.startup``, as an ASGI server drives it."""
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[dict[str, Any]] = []
    answered = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))
        answered.set()

    task = asyncio.create_task(app({"type": "lifespan"}, incoming.get, send))
    await incoming.put({"type": "lifespan.startup"})
    try:
        await asyncio.wait_for(answered.wait(), WAIT)
    finally:
        task.cancel()  # as uvicorn leaves a lifespan whose startup failed
        await asyncio.gather(task, return_exceptions=True)
    return sent


async def starlette_like(scope: Any, receive: Any, send: Any) -> None:
    """An app answering its own lifespan, as FastAPI and Starlette do."""
    while (await receive())["type"] != "lifespan.startup":
        pass
    await send({"type": "lifespan.startup.complete"})
    await receive()


@pytest.mark.parametrize("options", [{}, {"other_asgi_app": starlette_like}],
                         ids=["engineio answers", "other app answers"])
async def test_lifespan_startup_reports_an_unusable_store_as_failed_in_one_line(
        options: dict[str, Any], tmp_path: Path) -> None:
    sio = durable_adapter.AsyncServer(store=unmigrated_store(tmp_path), async_mode="asgi")
    sent = await lifespan_startup(durable_adapter.ASGIApp(sio, **options))
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    message = sent[0]["message"]
    assert message.startswith("durable_adapter: the tables at sqlite+aiosqlite:///")
    assert "run `durable-adapter migrate --store" in message and "\n" not in message


async def test_lifespan_startup_completes_with_the_store_open(tmp_path: Path) -> None:
    sio = durable_adapter.AsyncServer(store=f"sqlite:///{tmp_path / 'app.db'}",
                                      async_mode="asgi")
    sent = await lifespan_startup(durable_adapter.ASGIApp(sio, other_asgi_app=starlette_like))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete"]
    assert sio.durable_manager.started
    await sio.shutdown()


async def test_open_store_raises_one_line_startup_error(tmp_path: Path) -> None:
    sio = durable_adapter.AsyncServer(store=unmigrated_store(tmp_path))
    with pytest.raises(durable_adapter.StartupError) as raised:
        await sio.open_store()
    assert str(raised.value).startswith("durable_adapter: the tables at ")
    assert not sio.durable_manager.started


async def test_ready_answers_with_the_reason_instead_of_raising(tmp_path: Path) -> None:
    sio = durable_adapter.AsyncServer(store=unmigrated_store(tmp_path))
    answer = await sio.ready()
    assert not answer and answer.http_status == 503
    assert "run `durable-adapter migrate --store" in answer.reason


async def test_ready_opens_a_store_no_hook_opened_and_turns_false_at_shutdown() -> None:
    sio = durable_adapter.AsyncServer(store="memory://")
    assert not sio.durable_manager.started
    answer = await sio.ready()
    assert answer and answer.http_status == 200 and sio.durable_manager.started
    await sio.shutdown()
    answer = await sio.ready()
    assert not answer and "shutting down" in answer.reason


async def test_without_a_startup_hook_the_first_connection_opens_the_store(
        tmp_path: Path) -> None:
    sio = durable_adapter.AsyncServer(store=f"sqlite:///{tmp_path / 'app.db'}",
                                      async_mode="aiohttp")
    app = web.Application()
    sio.attach(app)
    app.on_startup.clear()  # an app served in a way that runs no start-up hook
    async with serving_app(app) as url:
        assert not sio.durable_manager.started
        client = durable_adapter.AsyncClient(reconnection=False)
        await client.connect(url, transports=["websocket"], wait_timeout=WAIT)
        try:
            assert sio.durable_manager.started
            assert await sio.ready()
        finally:
            await client.disconnect()
            await sio.shutdown()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(
            url, timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
        return response.status, await response.text()


async def test_the_aiohttp_route_answers_503_with_the_reason(tmp_path: Path) -> None:
    sio = durable_adapter.AsyncServer(store=unmigrated_store(tmp_path), async_mode="aiohttp")
    app = web.Application()
    app.router.add_get("/ready", aiohttp_handler(sio))
    async with serving_app(app) as url:
        status, text = await get(url + "/ready")
    assert status == 503 and "run `durable-adapter migrate --store" in text


async def test_the_demo_serves_ready() -> None:
    app = create_app("memory://")
    async with serving_app(app) as url:
        assert await get(url + "/ready") == (200, "ready\n")
