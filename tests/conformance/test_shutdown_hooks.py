"""``shutdown()`` as the frameworks call it: more than once, and from the ASGI lifespan.

The process-level behaviour (SIGTERM of aiohttp's ``run_app`` and of uvicorn) is
``tests/ops/test_shutdown.py``; these pin the parts a process test cannot single out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import durable_adapter
from durable_adapter.stores.base import Session
from tests._harness import WAIT, serving, until


def server() -> durable_adapter.AsyncServer:
    return durable_adapter.AsyncServer(store="memory://", async_mode="aiohttp",
                                       connection_state_recovery={})


def hold_batches(sio: durable_adapter.AsyncServer) -> tuple[list[list[str]], asyncio.Event]:
    """The sids of each ``save_sessions`` batch the server writes from now on, and an
    event each write waits for."""
    batches: list[list[str]] = []
    release = asyncio.Event()
    save = sio.store.save_sessions

    async def recording(sessions: Sequence[Session], **kwargs: Any) -> None:
        batches.append([session.sid for session in sessions])
        await release.wait()
        await save(sessions, **kwargs)

    sio.store.save_sessions = recording  # type: ignore[method-assign]
    return batches, release


async def test_a_second_shutdown_waits_for_the_first_and_saves_nothing_twice() -> None:
    sio = server()
    async with serving(sio) as url:  # serving's own exit calls shutdown() once more
        client = durable_adapter.AsyncClient(reconnection=False)
        await client.connect(url, transports=["websocket"], wait_timeout=WAIT)
        sid = client.get_sid()
        await sio.durable_manager.sessions.flush()  # written through at its connect
        batches, release = hold_batches(sio)
        first = asyncio.create_task(sio.shutdown())  # the framework's hook...
        await until(lambda: bool(batches), "the first shutdown to be saving")
        second = asyncio.create_task(sio.shutdown())  # ...and the user's, meanwhile
        done, _ = await asyncio.wait({second}, timeout=0.3)
        assert not done, "the second shutdown returned while the first was still saving"
        release.set()
        await asyncio.wait_for(second, WAIT)
        # returned once the first had closed the transport: its client reconnects
        await until(lambda: not client.connected, "the client saw its transport close")
        assert first.done()
    assert batches == [[sid]]
    await client.wait()


class Lifespan:
    """An ASGI server's side of the lifespan protocol, driven by hand."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[str] = []
        self.on_send: list[bool] = []

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def run(self, app: Any, sio: durable_adapter.AsyncServer) -> None:
        async def send(message: dict[str, Any]) -> None:
            self.sent.append(message["type"])
            self.on_send.append(shut_down.is_set())

        shutdown = sio.shutdown
        shut_down = asyncio.Event()

        async def recording_shutdown() -> None:
            await shutdown()
            shut_down.set()

        sio.shutdown = recording_shutdown  # type: ignore[method-assign]

        task = asyncio.create_task(app({"type": "lifespan"}, self.receive, send))
        await self.incoming.put({"type": "lifespan.startup"})
        await self.incoming.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, WAIT)


async def other_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app with its own lifespan, as a FastAPI/Starlette app has."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def test_the_asgi_app_shuts_the_server_down_before_it_reports_shutdown() -> None:
    for options in ({}, {"other_asgi_app": other_app}, {"on_shutdown": lambda: None}):
        sio = durable_adapter.AsyncServer(store="memory://", async_mode="asgi",
                                          connection_state_recovery={})
        lifespan = Lifespan()
        await lifespan.run(durable_adapter.ASGIApp(sio, **options), sio)
        assert lifespan.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        # not shut down at startup; done by the time the server hears 'complete'
        assert lifespan.on_send == [False, True], options
