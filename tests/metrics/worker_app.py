"""One worker process of a multi-worker deployment, for the multiprocess metrics test.

``python -m tests.metrics.worker_app STORE_URL``, with ``PROMETHEUS_MULTIPROC_DIR`` in its
environment as gunicorn's workers would have: a server on 127.0.0.1 (a free port) with
``GET /metrics`` (durable_adapter's handler) and ``POST /emit`` (emits ``tick`` to
everyone, stored). Prints ``listening on URL`` once it serves; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

import durable_adapter
from durable_adapter import metrics

LAG_INTERVAL = 0.05  # seconds: the gauges a worker writes are at most this old


async def main(store: str) -> None:
    metrics.enable(lag_interval=LAG_INTERVAL)
    sio = durable_adapter.AsyncServer(
        store=store, async_mode="aiohttp",
        connection_state_recovery={"max_disconnection_duration": 60})
    app = web.Application()
    sio.attach(app)
    app.router.add_get("/metrics", metrics.aiohttp_handler())

    async def emit(request: web.Request) -> web.Response:
        await sio.emit("tick", await request.json())
        return web.json_response({"emitted": True})

    app.router.add_post("/emit", emit)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await sio.shutdown()
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
