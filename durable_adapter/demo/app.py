"""The chat demo: one aiohttp app serving a page, its Socket.IO client, and our server.

Run it with ``durable-adapter demo`` (or ``python -m durable_adapter demo``), open the
printed URL in two tabs, chat, press "Force close" in one and watch it come back
*recovered* with the messages it missed.

Routes:

* ``GET /`` the page (``index.html``); ``GET /static/socket.io.min.js`` the official
  JS client (vendored, see ``static/README.md``).
* ``/socket.io/`` the :class:`durable_adapter.AsyncServer`.
* ``GET /metrics`` the Prometheus metrics (with ``durable-adapter[metrics]`` installed);
  the page shows the recovery counters from it next to its connection log.
* ``GET /ready`` 200 ``ready`` or 503 and the reason (:meth:`AsyncServer.ready`), for
  load balancers and container healthchecks.
* ``POST /say`` with JSON ``{"text": "...", "name": "..."}`` broadcasts a message as
  the server would, e.g. while a page is disconnected::

      curl -d '{"text": "hello"}' -H 'Content-Type: application/json' \\
           http://127.0.0.1:8000/say

This is a demo: no authentication, so it binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import metrics
from ..exceptions import ConfigurationError, DurableAdapterError
from ..readiness import aiohttp_handler
from ..server import AsyncServer

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
MAX_NAME = 40  # characters
MAX_TEXT = 500  # characters
MAX_BODY = 16 * 1024  # bytes of a POST /say request
RECOVERY = {"max_disconnection_duration": 120}
WORKER_START_TIMEOUT = 30.0  # seconds until the first worker must listen
WORKER_STOP_TIMEOUT = 10.0  # seconds a worker may take to save its sessions and exit

SIO_KEY = web.AppKey("sio", AsyncServer)


def make_message(name: Any, text: Any) -> dict[str, Any]:
    """A chat message as broadcast; raises ValueError for an unusable one."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    if name is not None and not isinstance(name, str):
        raise ValueError("name must be a string")
    return {
        "id": secrets.token_hex(8),
        "name": (name or "").strip()[:MAX_NAME] or "anonymous",
        "text": text.strip()[:MAX_TEXT],
        "at": time.time(),
    }


def create_server(store: str) -> AsyncServer:
    """The Socket.IO server of the demo, with its event handlers."""
    sio = AsyncServer(store=store, async_mode="aiohttp",
                      connection_state_recovery=RECOVERY)

    @sio.event
    async def connect(sid: str, environ: Any, auth: Any) -> None:
        failure = sio.recovery_failure(sid)
        if sio.is_recovered(sid):
            logger.info("demo: %s reconnected and recovered", sid)
        elif failure is not None:
            logger.info("demo: %s connected, new session (%s)", sid, failure.value)
        else:
            logger.info("demo: %s connected, new session", sid)

    @sio.event
    async def disconnect(sid: str, reason: Any = None) -> None:
        logger.info("demo: %s disconnected (%s)", sid, reason)

    @sio.event
    async def message(sid: str, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            return {"ok": False, "error": "expected {name, text}"}
        try:
            msg = make_message(data.get("name"), data.get("text"))
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        await sio.emit("message", msg)  # to everyone, sender included; stored for replay
        return {"ok": True}

    @sio.event
    async def whoami(sid: str, *args: Any) -> dict[str, Any]:
        # answered after any replay was sent: the page uses it to end its catch-up
        failure = sio.recovery_failure(sid)
        return {"sid": sid, "recovered": sio.is_recovered(sid),
                "failure": failure.value if failure else None, "now": time.time()}

    return sio


WEBSOCKET_ONLY_KEY = web.AppKey("websocket_only", bool)


async def _index(request: web.Request) -> web.StreamResponse:
    if request.app[WEBSOCKET_ONLY_KEY] and "transports" not in request.query:
        raise web.HTTPFound("/?transports=websocket")
    return web.FileResponse(HERE / "index.html", headers={"Cache-Control": "no-cache"})


async def _say(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        msg = make_message(body.get("name", "server"), body.get("text"))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return web.json_response({"ok": False, "error": str(exc)}, status=400)
    await request.app[SIO_KEY].emit("message", msg)
    return web.json_response({"ok": True, "message": msg})


def create_app(store: str, *, websocket_only: bool = False) -> web.Application:
    """The demo's aiohttp application; its shutdown saves the sessions of live pages
    (``sio.attach`` registers that on ``app.on_shutdown``)."""
    sio = create_server(store)
    app = web.Application(client_max_size=MAX_BODY)
    app[SIO_KEY] = sio
    app[WEBSOCKET_ONLY_KEY] = websocket_only
    sio.attach(app)
    app.router.add_get("/", _index)
    app.router.add_post("/say", _say)
    app.router.add_get("/ready", aiohttp_handler(sio))
    app.router.add_static("/static/", HERE / "static")
    if metrics.enabled():
        app.router.add_get("/metrics", metrics.aiohttp_handler())
    return app


async def serve(store: str, host: str, port: int,
                ready: Callable[[str], None] | None = None, *, worker: bool = False) -> None:
    """Serve the demo until SIGINT/SIGTERM; ``ready(url)`` is called once it listens.

    ``worker=True``: one of several processes sharing ``port`` (SO_REUSEPORT; the kernel
    spreads connections over them), so the page is served websocket-only.
    """
    app = create_app(store, websocket_only=worker)
    await app[SIO_KEY].open_store()  # a StartupError here is the CLI's one line
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=worker or None)
        try:
            await site.start()
        except OSError as exc:
            raise _cannot_listen(host, port, exc) from exc
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{bound}/"
        if ready is not None:
            ready(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
            except (NotImplementedError, RuntimeError):  # Windows: Ctrl+C raises instead
                pass
        await stop.wait()
        logger.info("demo: stopping")
    finally:
        await runner.cleanup()


def _cannot_listen(host: str, port: int, error: OSError) -> ConfigurationError:
    # asyncio's bind error carries the address in its text: the errno says it plainly
    reason = os.strerror(error.errno) if error.errno else str(error)
    return ConfigurationError(f"cannot listen on {host}:{port}: {reason} (another process "
                              "may be using the port: pick another with --port)")


def run(store: str, host: str, port: int,
        ready: Callable[[str], None] | None = None) -> None:
    """Blocking: :func:`serve` in a new event loop (``durable-adapter demo``)."""
    asyncio.run(serve(store, host, port, ready))


async def _open_once(store: str) -> None:
    """Open the store as a worker will, then close it; a StartupError says why not."""
    sio = AsyncServer(store=store, async_mode="aiohttp", connection_state_recovery=RECOVERY)
    try:
        await sio.open_store()
    finally:
        await sio.shutdown()


def _worker_main(store: str, host: str, port: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(serve(store, host, port, worker=True))
    except DurableAdapterError as exc:  # one line, as the single-process demo
        logger.error("%s", exc)
        raise SystemExit(1) from None


def run_workers(store: str, host: str, port: int, workers: int,
                ready: Callable[[str], None] | None = None) -> int:
    """Blocking: ``workers`` processes on one port, sharing the store (``--workers N``);
    returns the exit status: 1 when a worker ended on its own, else 0.

    A client that reconnects may land on any worker and recovers there: the sessions
    and packets are in the shared store, and each worker follows it.
    """
    # every worker must bind the same port: pick it here, or find it taken here (each
    # worker would fail alone otherwise)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        if hasattr(socket, "SO_REUSEPORT"):
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _cannot_listen(host, port, exc) from exc
        port = probe.getsockname()[1]
    # one check (and, on SQLite, one migration) here rather than one failure per worker
    asyncio.run(_open_once(store))
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker_main, args=(store, host, port),
                                 name=f"demo-worker-{i}") for i in range(workers)]
    for process in processes:
        process.start()
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        if ready is not None and _wait_listening(host, port, processes):
            shown = f"[{host}]" if ":" in host else host
            ready(f"http://{shown}:{port}/?transports=websocket")
        while not stop.is_set() and all(p.is_alive() for p in processes):
            stop.wait(0.5)
        failed = not stop.is_set()  # a worker ended on its own
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker saves its live sessions
        for process in processes:
            process.join(WORKER_STOP_TIMEOUT)
            if process.is_alive():
                process.kill()
    return 1 if failed else 0


def _wait_listening(host: str, port: int, processes: list[Any]) -> bool:
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while time.monotonic() < deadline and all(p.is_alive() for p in processes):
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False
