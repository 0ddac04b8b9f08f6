"""A minimal app, run the way a user runs it, for the start-up tests.

``python -m tests.ops.startup_app aiohttp|uvicorn STORE_URL PORT [no-auto-migrate]``:
``web.run_app(app)`` after ``sio.attach(app)``, or ``uvicorn.run`` of
``durable_adapter.ASGIApp(sio, ready_path="/ready")``; aiohttp also serves ``/ready``.
Nothing here opens the store or handles its failure: what ``attach`` and the lifespan do
on their own is what is tested. ``no-auto-migrate`` builds the SQLite store with
``auto_migrate=False``, as an app whose tables are migrated by a deploy step.
"""

from __future__ import annotations

import sys

from aiohttp import web

import durable_adapter
from durable_adapter.readiness import aiohttp_handler
from durable_adapter.stores import Store
from durable_adapter.stores.sql import SQLStore


def server(store: str | Store, async_mode: str) -> durable_adapter.AsyncServer:
    return durable_adapter.AsyncServer(
        store=store, async_mode=async_mode,
        connection_state_recovery=durable_adapter.RecoveryOptions(
            max_disconnection_duration=60))


def main(kind: str, url: str, port: int, *flags: str) -> None:
    store: str | Store = SQLStore(url, auto_migrate=False) if "no-auto-migrate" in flags \
        else url
    if kind == "aiohttp":
        sio = server(store, "aiohttp")
        app = web.Application()
        sio.attach(app)
        app.router.add_get("/ready", aiohttp_handler(sio))
        web.run_app(app, host="127.0.0.1", port=port, print=None)
    else:
        import uvicorn

        sio = server(store, "asgi")
        uvicorn.run(durable_adapter.ASGIApp(sio, ready_path="/ready"), host="127.0.0.1",
                    port=port, log_level="info")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:])
