"""The README's minimal app, run the way a user runs it, for the shutdown tests.

``python -m tests.ops.shutdown_app aiohttp|uvicorn STORE_URL PORT [PING_INTERVAL]``:
``web.run_app(app)`` (aiohttp's own SIGTERM handling and default timeouts), or
``uvicorn.run`` of
``durable_adapter.ASGIApp(sio)``. Nothing here handles a signal or calls ``shutdown()``:
what the frameworks do on their own is what is tested. ``POST /emit`` emits to everyone,
so a test can see delivery. Prints ``ready`` on stdout once the app has started.
"""

from __future__ import annotations

import sys
from typing import Any

from aiohttp import web

import durable_adapter


def server(store: str, async_mode: str, ping_interval: float) -> durable_adapter.AsyncServer:
    sio = durable_adapter.AsyncServer(
        store=store, async_mode=async_mode, ping_interval=ping_interval,
        connection_state_recovery={"max_disconnection_duration": 120})

    @sio.event
    async def connect(sid: str, environ: Any, auth: Any) -> None:
        if not sio.is_recovered(sid):
            await sio.enter_room(sid, "lobby")

    @sio.event
    async def shout(sid: str, text: str) -> bool:
        await sio.emit("chat", text, to="lobby")
        return True  # acknowledged once stored: the test knows it must arrive

    return sio


def ready() -> None:
    print("ready", flush=True)


def run_aiohttp(store: str, port: int, ping_interval: float) -> None:
    sio = server(store, "aiohttp", ping_interval)
    app = web.Application()
    sio.attach(app)

    async def started(_app: web.Application) -> None:
        ready()

    app.on_startup.append(started)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def run_uvicorn(store: str, port: int, ping_interval: float) -> None:
    import uvicorn

    sio = server(store, "asgi", ping_interval)
    app = durable_adapter.ASGIApp(sio, on_startup=ready)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    kind, url, port_text = sys.argv[1:4]
    ping_interval = float(sys.argv[4]) if len(sys.argv) > 4 else 25.0  # python-socketio's
    {"aiohttp": run_aiohttp, "uvicorn": run_uvicorn}[kind](url, int(port_text), ping_interval)
