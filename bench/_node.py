"""One benchmark server process: plain python-socketio or ours, on 127.0.0.1.

``python bench/_node.py --kind plain|ours --store URL [--schema S] [--port P --reuse-port]``
prints ``{"port": P, "control": C, "name": N}`` once it listens, then serves Socket.IO on
P and a small HTTP control surface on both P and C (C is private to this process, so a
benchmark can drive one worker of several sharing P through SO_REUSEPORT):

* ``POST /emit`` ``{"count", "room", "size", "window", "stamp"}``: emit ``count`` events
  ``ev`` to ``room``, at most ``window`` at a time (concurrent, as a busy server's
  handlers are; our store batches them). ``stamp`` puts ``time.monotonic()`` of the emit
  in the payload (CLOCK_MONOTONIC is one clock for every process of the machine).
* ``GET /cpu``: this process's CPU seconds (user + system) so far.
* ``GET /metrics``: the Prometheus metrics, with ``--metrics on`` (``off`` counts none).
* ``POST /metrics-state`` ``{"on": true|false}``: count from now on, or stop counting
  (``--metrics on`` or ``off`` only), so one process can be measured both ways.

Compression is off: ``http_compression=False`` (long-polling), and the websocket stays
uncompressed because the bench clients do not offer permessage-deflate (aiohttp's
``WebSocketResponse`` only compresses when the client offers it; python-engineio 4.x has
no server-side websocket compression switch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import time
from typing import Any

import socketio
from aiohttp import web

import durable_adapter
from durable_adapter import metrics


def make_store(url: str, schema: str | None, poll_interval: float | None) -> Any:
    """The store for ``url``; SQL stores get ``schema``/``poll_interval`` when given."""
    kwargs: dict[str, Any] = {}
    if schema:
        kwargs["schema"] = schema
    if poll_interval:
        kwargs["poll_interval"] = poll_interval
    if url.startswith("postgresql+asyncpg"):
        from durable_adapter.stores.sql.postgres import PostgresStore

        return PostgresStore(url, **kwargs)
    if url.startswith("sqlite+aiosqlite"):
        from durable_adapter.stores.sql import SQLStore

        return SQLStore(url, **kwargs)
    return url  # memory://, redis://: the server builds it from the URL


def build(kind: str, store: Any, name: str, with_metrics: bool = False
          ) -> tuple[web.Application, Any]:
    common: dict[str, Any] = {"async_mode": "aiohttp", "http_compression": False}
    if kind == "plain":
        sio = socketio.AsyncServer(**common)
    else:
        sio = durable_adapter.AsyncServer(
            store=store, connection_state_recovery={"max_disconnection_duration": 600},
            **common)

    @sio.on("connect")
    async def connect(sid: str, environ: Any, auth: Any) -> None:
        recovered = kind != "plain" and sio.is_recovered(sid)
        if not recovered and isinstance(auth, dict) and auth.get("room"):
            await sio.enter_room(sid, auth["room"])

    @sio.on("where")
    async def where(sid: str) -> str:
        return name

    async def emit(request: web.Request) -> web.Response:
        body = await request.json()
        count, room = int(body["count"]), body.get("room")
        pad = "x" * int(body.get("size", 100))
        window = asyncio.Semaphore(int(body.get("window", 100)))
        stamp = bool(body.get("stamp"))

        async def one(i: int) -> None:
            async with window:
                payload: dict[str, Any] = {"i": i, "pad": pad}
                if stamp:
                    payload["t"] = time.monotonic()
                await sio.emit("ev", payload, to=room)

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        return web.json_response({"t0": t0, "elapsed": time.monotonic() - t0})

    async def cpu(request: web.Request) -> web.Response:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return web.json_response({"cpu": usage.ru_utime + usage.ru_stime})

    app = web.Application()
    sio.attach(app)
    app.router.add_post("/emit", emit)
    app.router.add_get("/cpu", cpu)
    async def metrics_state(request: web.Request) -> web.Response:
        if (await request.json())["on"]:
            metrics.enable()
            metrics.watch(sio.durable_manager)  # its lag probe, as at a server's start
        else:
            metrics.disable()
        return web.json_response({"on": metrics.enabled()})

    if with_metrics:
        app.router.add_get("/metrics", metrics.aiohttp_handler())
        app.router.add_post("/metrics-state", metrics_state)
    return app, sio


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("plain", "ours"), default="ours")
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--schema", default=None)
    parser.add_argument("--poll-interval", type=float, default=None)
    parser.add_argument("--name", default="node")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument("--metrics", choices=("default", "on", "off"), default="default",
                        help="on: count (needs prometheus-client) and serve /metrics; "
                             "off: count nothing; default: as installed, no /metrics")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("BENCH_NODE_LOG", "WARNING"))
    refusals = logging.getLogger("durable_adapter.server")
    if refusals.getEffectiveLevel() > logging.INFO:  # show refused recoveries, not the rest
        refusals.setLevel(logging.INFO)
        refusals.addFilter(lambda record: record.getMessage().startswith("recovery refused")
                           or record.levelno >= logging.WARNING)
    if args.metrics == "on":
        metrics.enable()
    elif args.metrics == "off":
        metrics.disable()
    store = make_store(args.store, args.schema, args.poll_interval)
    app, sio = build(args.kind, store, args.name,
                     with_metrics=args.metrics in ("on", "off"))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, reuse_port=args.reuse_port or None)
    await site.start()
    control = web.TCPSite(runner, "127.0.0.1", 0)
    await control.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    control_port = control._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if args.kind == "ours":
        await sio.durable_manager.start()
    print(json.dumps({"port": port, "control": control_port, "name": args.name}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sio.shutdown()
    await runner.cleanup()


if __name__ == "__main__":
    # BENCH_NODE_PROFILE=path: cProfile the whole process, stats written to path at exit
    profile_to = os.environ.get("BENCH_NODE_PROFILE")
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            asyncio.run(main())
        finally:
            profiler.disable()
            profiler.dump_stats(f"{profile_to}.{os.getpid()}")
    else:
        asyncio.run(main())
