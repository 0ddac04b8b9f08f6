"""One server node of a cluster test, run as its own process.

``python -m tests.cluster.node_app --store URL [--schema S] [--poll-interval SECONDS]
[--server aiohttp|uvicorn]`` (PostgreSQL: the tables in schema S) prints ``{"port": P}`` once
it listens on 127.0.0.1, then serves Socket.IO plus a small HTTP control surface the test
drives: ``POST /emit`` (emit a run of numbered events), ``POST /op`` (cross-node
operations), ``GET /rooms/<sid>``, ``GET /sockets/<sid>`` (whether this node still holds
the socket: once it does not, a dropped socket's session is stored), ``GET /connects/<sid>``
(how its latest connect went: recovered, else why not). SIGTERM saves live sessions and
exits.

``--server uvicorn`` runs the same Socket.IO server as ``durable_adapter.ASGIApp`` under
uvicorn, as a user runs it (uvicorn handles SIGTERM, the lifespan shutdown saves), with no
control surface: the test drives it through another node. It prints ``{"port": P}``
before it listens (``--port`` is required then): wait for the port.

``DURABLE_ADAPTER_LEASE_EXPIRY`` (seconds) is the node lease expiry of issue 11, for tests
that kill a node and must not wait the default out; ``DURABLE_ADAPTER_HANDOVER_TIMEOUT``
(seconds) how long a reconnect waits for a silent owner before it takes the session.

Fault-test hooks (all off unless asked for): ``--always-connect`` and
``--skip-middlewares`` set python-socketio's ``always_connect`` and the recovery option
``skip_middlewares``. A client's auth may carry ``refuse_once`` (a token: the first connect
presenting it is refused, later ones go on) or ``slow_refuse`` (the connect handler waits
0.3 s, then refuses). Events: ``join`` (``{"room", "data"}``: enters the room, saves the
data as the socket's session, acks True), ``session`` (acks the socket's session),
``save_bad`` (saves a session holding a ``datetime``; acks whether ``save_session``
raised). ``GET /counters`` tells how often the refusing handlers ran; ``POST /op`` with
``{"op": "flush"}`` returns once the session writes made so far were attempted (at
most ``within`` s, default 5: ``"flushed"`` says whether they were).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
from typing import Any

from aiohttp import web

import durable_adapter

SHUTDOWN_TIMEOUT = 2.0  # seconds the web server waits for open connections at exit
LEASE_EXPIRY_ENV = "DURABLE_ADAPTER_LEASE_EXPIRY"
HANDOVER_TIMEOUT_ENV = "DURABLE_ADAPTER_HANDOVER_TIMEOUT"
SLOW_REFUSE_DELAY = 0.3  # seconds the ``slow_refuse`` connect handler takes to refuse


def lease_expiry() -> float | None:
    """Seconds after which another node may take this node's sessions over once it stops
    renewing its lease (issue 11); None: the library's default."""
    value = os.environ.get(LEASE_EXPIRY_ENV)
    return float(value) if value else None


def handover_timeout() -> float | None:
    """Seconds a reconnect waits for the live-looking owner of its session to let go;
    None: the library's default."""
    value = os.environ.get(HANDOVER_TIMEOUT_ENV)
    return float(value) if value else None


#: how often the refusing connect handlers ran, for ``GET /counters``
counters: dict[str, int] = {"slow_refuse": 0, "refuse_once": 0}


def server(store: Any, name: str, async_mode: str = "aiohttp", *,
           always_connect: bool = False, skip_middlewares: bool = False
           ) -> tuple[durable_adapter.AsyncServer, dict[str, dict[str, Any]]]:
    """The Socket.IO server of a node, and how each sid's latest connect went."""
    # pings every 5 s: python-engineio's client gives up on a connection that sends
    # nothing for max(ping_interval, ping_timeout) + 5 s, and a loaded test machine can
    # delay a 25 s ping past that. Ping interval + timeout (25 s) stay far above any
    # wait of the fault tests: a recovery that needs the old socket's ping timeout fails.
    recovery: dict[str, Any] = {"max_disconnection_duration": 60}
    if lease_expiry() is not None:
        recovery["lease_expiry"] = lease_expiry()
    if handover_timeout() is not None:
        recovery["handover_timeout"] = handover_timeout()
    if skip_middlewares:
        recovery["skip_middlewares"] = True
    sio = durable_adapter.AsyncServer(
        store=store, async_mode=async_mode, namespaces="*", ping_interval=5,
        always_connect=always_connect, connection_state_recovery=recovery)
    connects: dict[str, dict[str, Any]] = {}
    refused_tokens: set[str] = set()

    @sio.on("connect")
    async def connect(sid: str, environ: Any, auth: Any) -> bool | None:
        failure = sio.recovery_failure(sid)
        connects[sid] = {"recovered": sio.is_recovered(sid),
                         "failure": None if failure is None else failure.name}
        if not isinstance(auth, dict):
            return None
        if auth.get("slow_refuse"):
            counters["slow_refuse"] += 1
            await asyncio.sleep(SLOW_REFUSE_DELAY)
            return False
        token = auth.get("refuse_once")
        if isinstance(token, str) and token not in refused_tokens:
            refused_tokens.add(token)
            counters["refuse_once"] += 1
            return False
        if not sio.is_recovered(sid) and "room" in auth:
            await sio.enter_room(sid, auth["room"])
        return None

    @sio.on("where")
    async def where(sid: str) -> str:
        return name

    @sio.on("join")
    async def join(sid: str, body: dict[str, Any]) -> bool:
        await sio.enter_room(sid, body["room"])
        await sio.save_session(sid, body.get("data", {}))
        return True

    @sio.on("session")
    async def session(sid: str) -> Any:
        return await sio.get_session(sid)

    @sio.on("save_bad")
    async def save_bad(sid: str) -> dict[str, Any]:
        try:
            await sio.save_session(sid, {"when": datetime.datetime.now(datetime.UTC)})
        except Exception as exc:
            return {"saved": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"saved": True}

    return sio, connects


def build(store: Any, name: str, *, always_connect: bool = False,
          skip_middlewares: bool = False
          ) -> tuple[web.Application, durable_adapter.AsyncServer]:
    sio, connects = server(store, name, always_connect=always_connect,
                           skip_middlewares=skip_middlewares)

    async def emit(request: web.Request) -> web.Response:
        body = await request.json()
        # concurrent, as a busy server's handlers are: the store batches them, and
        # queues them (so numbers them) in the order they are started
        numbers = range(body["start"], body["start"] + body["count"])
        results = await asyncio.gather(*(
            sio.emit("seq", {"tag": body["tag"], "i": i}, to=body.get("to"))
            for i in numbers), return_exceptions=True)
        failed = [i for i, result in zip(numbers, results, strict=True)
                  if isinstance(result, BaseException)]
        if failed and not body.get("tolerate"):  # a failed emit raised: say so
            raise next(r for r in results if isinstance(r, BaseException))
        return web.json_response({"done": len(numbers) - len(failed), "failed": failed})

    async def op(request: web.Request) -> web.Response:
        body = await request.json()
        kind = body["op"]
        if kind == "disconnect":
            await sio.disconnect(body["sid"])
        elif kind == "enter_room":
            await sio.enter_room(body["sid"], body["room"])
        elif kind == "leave_room":
            await sio.leave_room(body["sid"], body["room"])
        elif kind == "close_room":
            await sio.close_room(body["room"])
        elif kind == "call":
            answer = await sio.call(body["event"], body.get("data"), to=body["sid"], timeout=10)
            return web.json_response({"answer": answer})
        elif kind == "volatile":
            await sio.emit(body["event"], body.get("data"), to=body.get("to"), volatile=True)
        elif kind == "flush":
            # test-only: the written-through sessions of what happened so far are in
            # the store (or their write failed) once this returns; bounded: a writer
            # that keeps failing says so ("flushed": false) instead of hanging
            flushed = await sio.durable_manager.sessions.flush(body.get("within", 5.0))
            return web.json_response({"ok": True, "flushed": flushed})
        return web.json_response({"ok": True})

    async def rooms(request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        return web.json_response({"rooms": sorted(sio.rooms(sid))})

    async def socket(request: web.Request) -> web.Response:
        # test-only: the session of a dropped socket is saved before it stops counting
        # as connected, so "not held" means "recoverable from any node"
        sid = request.match_info["sid"]
        return web.json_response({"held": sio.manager.is_connected(sid, "/")})

    async def connect_of(request: web.Request) -> web.Response:
        return web.json_response(connects.get(request.match_info["sid"]))

    async def counted(request: web.Request) -> web.Response:
        return web.json_response(counters)

    app = web.Application()
    sio.attach(app)
    app.router.add_get("/connects/{sid}", connect_of)
    app.router.add_post("/emit", emit)
    app.router.add_post("/op", op)
    app.router.add_get("/rooms/{sid}", rooms)
    app.router.add_get("/sockets/{sid}", socket)
    app.router.add_get("/counters", counted)
    return app, sio


def make_store(url: str, schema: str | None, poll_interval: float | None) -> Any:
    """The URL as is, or a store built with the options a URL cannot carry."""
    if schema is None and poll_interval is None:
        return url
    options: dict[str, Any] = {"schema": schema}
    if poll_interval is not None:
        options["poll_interval"] = poll_interval
    if url.startswith("postgresql"):
        from durable_adapter.stores.sql.postgres import PostgresStore

        return PostgresStore(url, **options)
    from durable_adapter.stores.sql import SQLStore

    return SQLStore(url, **options)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--name", default="node")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--schema", default=None, help="PostgreSQL schema of the tables")
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="seconds between the store's top checks")
    parser.add_argument("--server", choices=["aiohttp", "uvicorn"], default="aiohttp")
    parser.add_argument("--always-connect", action="store_true",
                        help="python-socketio's always_connect=True")
    parser.add_argument("--skip-middlewares", action="store_true",
                        help="recovery option skip_middlewares=True")
    args = parser.parse_args()
    if args.server == "uvicorn":
        await run_uvicorn(make_store(args.store, args.schema, args.poll_interval),
                          args.name, args.port)
        return
    app, sio = build(make_store(args.store, args.schema, args.poll_interval), args.name,
                     always_connect=args.always_connect,
                     skip_middlewares=args.skip_middlewares)
    # sio.shutdown() has saved the sessions by the time the runner stops; its open
    # websockets would otherwise hold the exit for aiohttp's default 60 s
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await sio.durable_manager.start()
    print(json.dumps({"port": port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sio.shutdown()
    await runner.cleanup()


async def run_uvicorn(store: Any, name: str, port: int) -> None:
    import uvicorn

    assert port, "--port is required with --server uvicorn"
    sio, _connects = server(store, name, "asgi")
    app = durable_adapter.ASGIApp(
        sio, on_startup=lambda: print(json.dumps({"port": port}), flush=True))
    # uvicorn's own signal handling: SIGTERM ends the serve, then the lifespan shutdown
    await uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                        log_level="warning")).serve()


if __name__ == "__main__":
    asyncio.run(main())
