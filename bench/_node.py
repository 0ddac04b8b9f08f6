"""One benchmark server process: plain python-socketio or ours, on 127.0.0.1.

``python bench/_node.py --kind plain|ours --store URL [--schema S] [--port P --reuse-port]``
prints ``{"port": P, "control": C, "name": N}`` once it listens, then serves Socket.IO on
P and a small HTTP control surface on both P and C (C is private to this process, so a
benchmark can drive one worker of several sharing P through SO_REUSEPORT):

* ``POST /emit`` ``{"count", "room", "size", "window", "stamp"}``: emit ``count`` events
  ``ev`` to ``room``, at most ``window`` at a time (concurrent, as a busy server's
  handlers are; our store batches them). ``stamp`` puts ``time.monotonic()`` of the emit
  in the payload (CLOCK_MONOTONIC is one clock for every process of the machine).
* ``GET /cpu``: this process's CPU seconds (user + system) so far, and the event loop
  thread's alone (``loop_thread``).
* ``GET /metrics``: the Prometheus metrics, with ``--metrics on`` (``off`` counts none).
* ``POST /metrics-state`` ``{"on": true|false}``: count from now on, or stop counting
  (``--metrics on`` or ``off`` only), so one process can be measured both ways.
* ``POST /write-through`` ``{"on": true|false}``: sessions written through from now on
  (as ``connection_state_recovery={"write_through": True}``), or only at drops; set it
  while no client is connected. ``--write-through on|off`` is the state at start.
* ``POST /profile`` ``{"path": P}``: start a cProfile of this process's event loop
  thread; ``{"path": null}`` stops it and writes the stats to the path given at start.
* ``GET /stages``: with ``BENCH_NODE_STAGES=1`` in the environment, the wall time of each
  stage of the connect path since the last call (calls, mean, p95, total ms), and the
  garbage collector's collections; ``GET /heap``: the objects it tracks, by type.
* ``GET /frames``: frames written straight to websockets and sends left to
  python-engineio's writer task by the delivery (``durable_adapter._direct``), so far.
* ``GET /delivered``: the last seq this node delivered (ours only).
* ``GET /gc``: garbage collections so far and the seconds they took, per generation,
  and how many objects the collector tracks now (``?types=1``: and the most common types).
* ``POST /settle``: wait until the session writer has written everything marked so far;
  answers the Engine.IO sockets open, and the ``save_sessions`` / ``delete_sessions``
  calls (and sessions written) since the start.

Socket.IO events for churn benchmarks (each acknowledged): ``join`` / ``leave`` ``i``
enter / leave room ``churn-i``; ``save`` ``i`` calls ``save_session`` with a small dict.

Compression is off: ``http_compression=False`` (long-polling), and the websocket stays
uncompressed because the bench clients do not offer permessage-deflate (aiohttp's
``WebSocketResponse`` only compresses when the client offers it; python-engineio 4.x has
no server-side websocket compression switch).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
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
from durable_adapter.stores.memory import MemoryStore


class GCStats:
    """Garbage collections of this process and the time they took, per generation."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.counts[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._started

    def figures(self) -> dict[str, Any]:
        return {"counts": self.counts, "seconds": self.seconds,
                "objects": len(gc.get_objects())}


gc_stats = GCStats()


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


def build(kind: str, store: Any, name: str, with_metrics: bool = False,
          write_through: bool = True) -> tuple[web.Application, Any]:
    common: dict[str, Any] = {"async_mode": "aiohttp", "http_compression": False}
    # wrapped before the server is built (its restorer binds its methods then)
    stages = _stage_timer(kind == "ours") if os.environ.get("BENCH_NODE_STAGES") else {}
    if kind == "plain":
        sio = socketio.AsyncServer(**common)
    else:
        sio = durable_adapter.AsyncServer(
            store=store, connection_state_recovery={"max_disconnection_duration": 600,
                                                   "write_through": write_through},
            **common)

    @sio.on("connect")
    async def connect(sid: str, environ: Any, auth: Any) -> None:
        recovered = kind != "plain" and sio.is_recovered(sid)
        if not recovered and isinstance(auth, dict) and auth.get("room"):
            await sio.enter_room(sid, auth["room"])

    @sio.on("where")
    async def where(sid: str) -> str:
        return name

    @sio.on("join")
    async def join(sid: str, i: Any = 0) -> int:
        await sio.enter_room(sid, f"churn-{i}")
        return 1

    @sio.on("leave")
    async def leave(sid: str, i: Any = 0) -> int:
        await sio.leave_room(sid, f"churn-{i}")
        return 1

    @sio.on("save")
    async def save(sid: str, i: Any = 0) -> int:
        await sio.save_session(sid, {"i": i, "user": sid, "pad": "x" * 50})
        return 1

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
        # the event loop's thread alone: the rest is driver threads (aiosqlite)
        return web.json_response({"cpu": usage.ru_utime + usage.ru_stime,
                                  "loop_thread": time.thread_time()})

    # counts of the store's session writes, for the write-through bench (a counter
    # per call: nothing against a transaction)
    writes = {"save_calls": 0, "saved": 0, "delete_calls": 0}
    if kind == "ours":
        durable_store = sio.store
        save_sessions, delete_sessions = durable_store.save_sessions, \
            durable_store.delete_sessions

        async def counted_save(sessions: Any, **kwargs: Any) -> None:
            writes["save_calls"] += 1
            writes["saved"] += len(sessions)
            await save_sessions(sessions, **kwargs)

        async def counted_delete(*args: Any, **kwargs: Any) -> Any:
            writes["delete_calls"] += 1
            return await delete_sessions(*args, **kwargs)

        durable_store.save_sessions = counted_save
        durable_store.delete_sessions = counted_delete

    async def write_through_state(request: web.Request) -> web.Response:
        # as the server decides at start: a memory store's sessions are never live-written
        memory = isinstance(sio.store, MemoryStore)
        sio.durable_manager.sessions.live = bool((await request.json())["on"]) and not memory
        return web.json_response({"on": sio.durable_manager.sessions.live})

    async def frames(request: web.Request) -> web.Response:
        # frames written to websockets directly / left to python-engineio's writer task
        direct = getattr(sio.durable_manager, "direct", None) if kind == "ours" else None
        return web.json_response({"direct": direct.direct if direct else 0,
                                  "queued": direct.queued if direct else 0})

    async def stage_times(request: web.Request) -> web.Response:
        # per stage of the connect path: calls, mean and p95 wall ms since the last read
        out = {}
        for name, times in stages.items():
            if times:
                ordered = sorted(times)
                out[name] = {"calls": len(times), "mean_ms": sum(times) / len(times) * 1e3,
                             "total_ms": sum(times) * 1e3,
                             "p95_ms": ordered[int(0.95 * (len(ordered) - 1))] * 1e3}
            times.clear()
        return web.json_response(out)

    async def heap(request: web.Request) -> web.Response:
        # objects the garbage collector tracks, by type (the cost of a full collection)
        import collections
        import gc

        kinds = collections.Counter(type(o).__name__ for o in gc.get_objects())
        return web.json_response({"objects": sum(kinds.values()),
                                  "top": kinds.most_common(25)})

    profiling: dict[str, Any] = {}

    async def delivered(request: web.Request) -> web.Response:
        return web.json_response({"delivered": sio.durable_manager.delivered})

    async def gc_pauses(request: web.Request) -> web.Response:
        figures = gc_stats.figures()
        if request.query.get("types"):  # the most common types of the tracked objects
            counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
            figures["types"] = counts.most_common(12)
        return web.json_response(figures)

    async def profile(request: web.Request) -> web.Response:
        import cProfile

        path = (await request.json()).get("path")
        if path:
            profiling["profile"], profiling["path"] = cProfile.Profile(), path
            profiling["profile"].enable()
        elif profiling:
            profiling["profile"].disable()
            profiling["profile"].dump_stats(profiling.pop("path"))
            profiling.clear()
        return web.json_response({"profiling": bool(profiling)})

    async def settle(request: web.Request) -> web.Response:
        if kind == "ours":
            await sio.durable_manager.sessions.flush()
        return web.json_response({"sockets": len(sio.eio.sockets), **writes})

    app = web.Application()
    sio.attach(app)
    app.router.add_post("/emit", emit)
    app.router.add_get("/cpu", cpu)
    app.router.add_post("/write-through", write_through_state)
    app.router.add_post("/settle", settle)
    app.router.add_post("/profile", profile)
    app.router.add_get("/gc", gc_pauses)
    if kind == "ours":
        app.router.add_get("/delivered", delivered)
    app.router.add_get("/frames", frames)
    app.router.add_get("/stages", stage_times)
    app.router.add_get("/heap", heap)
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


def _stage_timer(ours: bool) -> dict[str, list[float]]:
    """Wall time of each stage of the connect path, per call (``GET /stages``): wraps
    the server's and the restorer's methods in this process only; call it before the
    server is built."""
    from durable_adapter import _restore, server

    stages: dict[str, list[float]] = {}
    import gc

    # the collector's pauses, in CPU time of this thread (others' load left out)
    collections = {gen: stages.setdefault(f"gc generation {gen} (CPU)", []) for gen in range(3)}
    started: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.thread_time()]
        elif started:
            collections[info["generation"]].append(time.thread_time() - started[0])

    gc.callbacks.append(on_gc)
    if not ours:
        return stages

    def timed(cls: Any, method: str, name: str) -> None:
        original = getattr(cls, method)
        times = stages.setdefault(name, [])

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                times.append(time.perf_counter() - t0)

        setattr(cls, method, wrapper)

    sizes = stages.setdefault("take batch size (as ms: requests)", [])
    take_batch = _restore.Restorer._take_batch

    async def counted_take_batch(self: Any, requests: Any) -> Any:
        sizes.append(len(requests) / 1e3)
        return await take_batch(self, requests)

    _restore.Restorer._take_batch = counted_take_batch  # type: ignore[method-assign]


    for cls, method, name in (
            (server.AsyncServer, "_handle_eio_connect", "eio connect (whole)"),
            (server.AsyncServer, "_handle_connect", "CONNECT (whole)"),
            (_restore.Restorer, "prepare", "prepare (take, bounds, owed read)"),
            (_restore.Restorer, "_take", "  take"),
            (_restore.Restorer, "_take_batch", "  take (one store call, per batch)"),
            (_restore.Restorer, "_read_bounds", "  bounds (one store call, per batch)"),
            (_restore.Restorer, "_sid_released", "  sid released"),
            (_restore.Restorer, "_load_replay", "  load replay (bounds x2, read)"),
            (_restore.Restorer, "_read_replay", "    read replay"),
            (server.AsyncServer, "_write_connected", "session write (CONNECT reply)"),
            (_restore.Restorer, "complete", "complete (replay sent)"),
            (_restore.Restorer, "end", "end")):
        timed(cls, method, name)
    return stages


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
    parser.add_argument("--backlog", type=int, default=128,
                        help="listen backlog (aiohttp's default 128; Node.js listens "
                             "with 511): a storm of connects beyond it while the loop is "
                             "busy has its SYNs dropped and retried a second later")
    parser.add_argument("--metrics", choices=("default", "on", "off"), default="default",
                        help="on: count (needs prometheus-client) and serve /metrics; "
                             "off: count nothing; default: as installed, no /metrics")
    parser.add_argument("--write-through", choices=("on", "off"), default="on",
                        help="sessions written through from connect on (default), or "
                             "only at drops (ours only)")
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
                     with_metrics=args.metrics in ("on", "off"),
                     write_through=args.write_through == "on")
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, reuse_port=args.reuse_port or None,
                       backlog=args.backlog)
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
