"""The server the socket.io-protocol test-suite expects, in python-socketio.

``python -m tests.protocol.suite_app stock|off|on [--store URL] [--schema NAME]
[--web aiohttp|uvicorn] [--host H] [--port P]``

* ``stock``: python-socketio's own ``socketio.AsyncServer``;
* ``off``: ours, ``connection_state_recovery=None``;
* ``on``: ours with recovery on every namespace, on ``--store`` (memory by default; a
  PostgreSQL ``--schema`` must already hold the migrated tables).

The configuration is the one the suite's README gives for the JavaScript server: ping
every 300 ms with a 200 ms timeout, a 1 MB payload limit, any origin, a ``/custom``
namespace, and on connect an ``auth`` event echoing the handshake's auth (``{}`` when the
client sent none, as ``socket.handshake.auth`` is in JS); ``message`` is echoed back as
``message-back`` and ``message-with-ack`` acknowledged with its own arguments.

``--web`` picks the web server: aiohttp (``sio.attach``; aiohttp always negotiates
permessage-deflate) or uvicorn (``ASGIApp``, permessage-deflate off as in JS socket.io).
Serves on ``--host`` (127.0.0.1) and ``--port`` (0: an ephemeral one; the suite's own
source expects 3000 on localhost) and prints ``{"port": P}`` once it listens; stops
on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
from typing import Any

import socketio
from aiohttp import web

import durable_adapter
from durable_adapter.stores.sql.postgres import PostgresStore

# what the suite's README gives the JavaScript server
OPTIONS: dict[str, Any] = {
    "ping_interval": 0.3,  # seconds
    "ping_timeout": 0.2,  # seconds
    "max_http_buffer_size": 1_000_000,  # bytes
    "cors_allowed_origins": "*",
    # the CONNECT reply before the connect handler runs, as JS sends it before its
    # "connection" event: the handler's "auth" event must come after it
    "always_connect": True,
}
NAMESPACES = ("/", "/custom")


def build(kind: str, store: str, schema: str | None, mode: str) -> socketio.AsyncServer:
    if kind == "stock":
        return socketio.AsyncServer(async_mode=mode, **OPTIONS)
    if kind == "off":
        return durable_adapter.AsyncServer(async_mode=mode,
                                           connection_state_recovery=None, **OPTIONS)
    chosen = PostgresStore(store, schema=schema) if schema else store
    return durable_adapter.AsyncServer(
        async_mode=mode, store=chosen,
        connection_state_recovery={"namespaces": NAMESPACES}, **OPTIONS)


def handle(sio: socketio.AsyncServer) -> None:
    def on_connect(namespace: str) -> None:
        @sio.on("connect", namespace=namespace)
        async def connect(sid: str, environ: Any, auth: Any = None) -> None:
            await sio.emit("auth", {} if auth is None else auth, to=sid, namespace=namespace)

    for namespace in NAMESPACES:
        on_connect(namespace)

    @sio.on("message")
    async def message(sid: str, *args: Any) -> None:
        await sio.emit("message-back", args, to=sid)  # a tuple: one argument each

    @sio.on("message-with-ack")
    async def message_with_ack(sid: str, *args: Any) -> tuple[Any, ...]:
        return args  # a tuple: python-socketio sends its items as the ack's arguments


def listening(port: int) -> None:
    print(json.dumps({"port": port}), flush=True)


async def serve_uvicorn(sio: socketio.AsyncServer, host: str, port: int) -> None:
    import uvicorn

    app = (durable_adapter.ASGIApp if isinstance(sio, durable_adapter.AsyncServer)
           else socketio.ASGIApp)(sio)
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", lifespan="on",
        # JS socket.io's default (perMessageDeflate: false); with it on, the suite's
        # ws client compresses its frames in zlib's thread pool, so an HTTP request
        # sent after them can overtake them (see tests/README.md)
        ws_per_message_deflate=False))
    # bound and listening before the port is printed: connections wait in the backlog
    with socket.create_server((host, port)) as listener:
        listening(listener.getsockname()[1])
        await server.serve(sockets=[listener])  # it handles SIGTERM and SIGINT


async def serve_aiohttp(sio: socketio.AsyncServer, host: str, port: int) -> None:
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    listening(port)
    try:
        await stop.wait()
    finally:
        await sio.shutdown()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("stock", "off", "on"))
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--schema", default=None)
    parser.add_argument("--web", choices=("aiohttp", "uvicorn"), default="aiohttp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> None:
    sio = build(args.kind, args.store, args.schema,
                "aiohttp" if args.web == "aiohttp" else "asgi")
    handle(sio)
    await (serve_aiohttp if args.web == "aiohttp" else serve_uvicorn)(sio, args.host, args.port)


if __name__ == "__main__":
    main()
