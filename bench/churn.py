"""Churn: what a server keeps after many clients came and went.

A server process (ours on each store, and stock python-socketio without recovery as the
baseline) and 50 concurrent client lanes running ``--cycles`` cycles in all, in turn:

* recover, then leave: connect, join a room, drop the transport, reconnect and recover,
  disconnect cleanly;
* drop for good: connect, join, drop the transport, never come back;
* forged: connect presenting a made-up pid and offset (a fresh session), disconnect.

The server emits a stored packet to each new socket and one to the room at each join.
Printed per server: recoveries that worked, the server's RSS growth per 1000 cycles
(over the second half of the run, after a ``gc.collect()``; the first half warms the
allocator up), its RSS at the end, the growth of the objects its garbage collector tracks
per 1000 cycles over the second half, counted at half and at the end once the server let
go of every socket (python-engineio's per-socket tasks end up to a ping interval after
the close) and the memory store emptied: a per-socket structure left behind shows
there, by type, without the allocator's noise; the bytes its bounded recent history
holds (packets kept for replays: it grows with the packets until its budget, 32 MiB by
default, ``--history-bytes`` to change it), the
sockets and rooms it still tracks, and the sessions and packets the store still holds
once every session expired and a purge ran: on ``memory://`` the server's own purge
(nothing else runs), on the shared stores one pass run inside the server process.

Usage::

    .venv/bin/python bench/churn.py                         # 2000 cycles, every store
    .venv/bin/python bench/churn.py --cycles 500 --stores memory sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import random
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from _common import START_WAIT, StoreSpec, drop_store, make_store, scratch_dir, table
from aiohttp import web

LANES = 50  # clients at a time
WINDOW = 4.0  # seconds: max_disconnection_duration of the server under test
CONNECT_WAIT = 20.0  # seconds for one connect
EXPIRY_WAIT = 60.0  # seconds the memory store may take to purge once all expired
KINDS = ("recover", "recover", "gone", "forged")  # the cycles, in turn


# -- the server process ------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def _held(sio: Any) -> dict[str, int]:
    """What the store still holds: sessions and packets."""
    store = getattr(sio, "store", None)
    if store is None:
        return {"sessions": 0, "packets": 0}
    from durable_adapter.stores.memory import MemoryStore

    if isinstance(store, MemoryStore):
        return {"sessions": len(store._sessions), "packets": len(store._packets)}
    if hasattr(store, "engine"):
        from sqlalchemy import func, select

        from durable_adapter.stores.sql.schema import packets, sessions

        async with store.engine.connect() as connection:
            counts = {}
            for name, table_ in (("sessions", sessions), ("packets", packets)):
                query = select(func.count()).select_from(table_)
                counts[name] = int((await connection.execute(query)).scalar_one())
            return counts
    keys = store.keys
    session_keys = [k async for k in store.redis.scan_iter(match=keys._sessions + "*",
                                                           count=1000)]
    bounds = await store.bounds()
    return {"sessions": len(session_keys), "packets": bounds.top - bounds.purged_through}


async def serve(kind: str, url: str, schema: str | None, history: int | None) -> None:
    import socketio

    import durable_adapter

    options: dict[str, Any] = {"async_mode": "aiohttp", "http_compression": False}
    if kind == "stock":
        sio = socketio.AsyncServer(**options)
    else:
        store: Any = url
        if url.startswith("postgresql"):
            from durable_adapter.stores.sql.postgres import PostgresStore

            store = PostgresStore(url, schema=schema)
        recovery: dict[str, Any] = {"max_disconnection_duration": WINDOW}
        if history is not None:
            recovery["history_cache_bytes"] = history
        sio = durable_adapter.AsyncServer(store=store, connection_state_recovery=recovery,
                                          **options)

    @sio.on("connect")
    async def connect(sid: str, environ: Any, auth: Any) -> None:
        if kind == "stock" or not sio.is_recovered(sid):
            await sio.emit("welcome", sid, to=sid)

    @sio.on("join")
    async def join(sid: str, room: str) -> int:
        await sio.enter_room(sid, room)
        await sio.emit("tick", room, to=room)
        return 1

    async def state(request: web.Request) -> web.Response:
        gc.collect()
        manager = sio.manager
        tracked = gc.get_objects()
        answer = {"rss": _rss_bytes(), "eio_sockets": len(sio.eio.sockets),
                  "rooms": len(manager.rooms.get("/", {})), "objects": len(tracked),
                  "types": collections.Counter(type(o).__qualname__ for o in tracked),
                  **await _held(sio)}
        del tracked
        if kind != "stock":
            answer["registry"] = len(list(manager.sockets))
            answer["recent_bytes"] = sio.durable_manager.recent.size
        return web.json_response(answer)

    async def purge(request: web.Request) -> web.Response:
        body = await request.json()
        result = await sio.store.purge(now=time.time(), retention=float(body["retention"]))
        return web.json_response({"sessions": result.sessions, "packets": result.packets})

    app = web.Application()
    sio.attach(app)
    app.router.add_get("/state", state)
    app.router.add_post("/purge", purge)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"port": port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    await sio.shutdown()
    await runner.cleanup()


# -- the driving process -----------------------------------------------------------------


class Server:
    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    async def start(cls, kind: str, spec: StoreSpec | None, history: int | None) -> Server:
        args = [sys.executable, __file__, "--serve", kind,
                spec.url if spec else "memory://"]
        if spec and spec.schema:
            args += ["--schema", spec.schema]
        if history is not None:
            args += ["--history-bytes", str(history)]
        process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), START_WAIT)
        return cls(process, json.loads(line)["port"])

    async def get(self, path: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.url + path) as response:
            answer: dict[str, Any] = await response.json()
            return answer

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, \
                http.post(self.url + path, json=body) as response:
            answer: dict[str, Any] = await response.json()
            return answer

    async def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 20)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@dataclass
class Run:
    label: str
    cycles: int = 0
    recovered: int = 0
    tried: int = 0
    errors: int = 0
    rss: list[tuple[int, int]] = field(default_factory=list)  # (cycles done, bytes)
    #: (cycles done, state) once every socket of the cycles so far was gone and the
    #: store emptied (ours on memory), at half the run and at the end
    settled: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    end: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    purge_seconds: float = float("nan")

    def growth_per_1000(self) -> float:
        """MB of RSS per 1000 cycles over the second half of the run (the first half
        warms the allocator up to the lanes' peak)."""
        (c0, r0), (c1, r1) = self.rss[0], self.rss[-1]
        return (r1 - r0) / 2**20 / max(1, c1 - c0) * 1000

    def objects_per_1000(self) -> float:
        """Objects the garbage collector tracks, growth per 1000 cycles over the second
        half, both ends taken once the server let go of every socket (what a per-socket
        structure left behind would show, without the allocator's noise)."""
        (c0, s0), (c1, s1) = self.settled[0], self.settled[-1]
        grown: int = s1["objects"] - s0["objects"]
        return grown / max(1, c1 - c0) * 1000

    def grown_types(self) -> str:
        grown = collections.Counter(self.settled[-1][1]["types"])
        grown.subtract(self.settled[0][1]["types"])
        return ", ".join(f"{name} {n:+,}" for name, n in grown.most_common(8) if n > 0)


async def _drop(client: Any) -> None:
    """Close the transport as a network loss would (no DISCONNECT packet)."""
    await client.eio.ws.close()
    await client.eio.disconnect(abort=True)


async def _connect(url: str, state: dict[str, Any] | None = None) -> Any:
    import durable_adapter

    client = durable_adapter.AsyncClient(reconnection=False)
    if state:
        client.load_recovery_state(state)
    await client.connect(url, transports=["websocket"], wait_timeout=CONNECT_WAIT)
    return client


async def cycle(url: str, kind: str, room: str, run: Run) -> None:
    client = await _connect(url)
    if kind == "forged":
        await client.disconnect()
        forged = {"/": {"pid": secrets.token_urlsafe(24),
                        "offset": f"{secrets.token_hex(4)}-{random.randint(1, 10**6)}"}}
        client = await _connect(url, forged)
        await client.disconnect()
        return
    await client.call("join", room, timeout=CONNECT_WAIT)
    await _drop(client)
    if kind == "gone":
        return
    state = client.recovery_state()
    again = await _connect(url, state)
    run.tried += 1
    run.recovered += again.is_recovered()
    await again.disconnect()


async def churn(server: Server, first: int, last: int, run: Run) -> None:
    """Cycles ``first`` .. ``last - 1``, ``LANES`` at a time."""
    counter = iter(range(first, last))

    async def lane() -> None:
        for n in counter:
            try:
                await cycle(server.url, KINDS[n % len(KINDS)], f"room-{n % 200}", run)
            except Exception:
                run.errors += 1
            run.cycles += 1

    await asyncio.gather(*(lane() for _ in range(LANES)))


async def _settle(server: Server, condition: Callable[[dict[str, Any]], bool],
                  within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        state = await server.get("/state")
        if condition(state) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.5)


async def _let_go(server: Server, memory_store: bool) -> dict[str, Any]:
    """The state once the server let go of every socket of the cycles so far
    (python-engineio's per-socket tasks end up to a ping interval after the close) and,
    on ``memory://``, its own purge emptied the store."""
    def gone(state: dict[str, Any]) -> bool:
        return not state["types"].get("AsyncSocket") and (
            not memory_store or (not state["sessions"] and not state["packets"]))

    return await _settle(server, gone, WINDOW + EXPIRY_WAIT)


async def measure(label: str, kind: str, spec: StoreSpec | None, cycles: int,
                  history: int | None) -> Run:
    run = Run(label)
    server = await Server.start(kind, spec, history)
    memory_store = kind != "stock" and (spec is None or spec.url.startswith("memory"))
    try:
        half = max(1, cycles // 2)
        await churn(server, 0, half, run)
        run.rss.append((run.cycles, (await server.get("/state"))["rss"]))
        run.settled.append((run.cycles, await _let_go(server, memory_store)))
        await churn(server, half, cycles, run)
        run.end = await server.get("/state")
        run.rss.append((run.cycles, run.end["rss"]))
        if kind == "stock":
            run.settled.append((run.cycles, await _let_go(server, False)))
            return run
        finished = time.monotonic()
        if memory_store:
            # nothing but the server's own purge: until it emptied the store
            run.after = await _settle(server, lambda s: not s["sessions"] and not s["packets"],
                                      WINDOW + EXPIRY_WAIT)
        else:
            await asyncio.sleep(WINDOW + 1)  # every session expired
            await server.post("/purge", {"retention": WINDOW})
            run.after = await server.get("/state")
        run.purge_seconds = time.monotonic() - finished
        run.settled.append((run.cycles, await _let_go(server, memory_store)))
    finally:
        await server.stop()
    return run


async def main(args: argparse.Namespace) -> None:
    history = args.history_bytes
    runs: list[Run] = [await measure("python-socketio (stock, no recovery)", "stock", None,
                                     args.cycles, None)]
    with scratch_dir() as tmp:
        for kind in args.stores:
            spec = await make_store(kind, tmp, "churn")
            if isinstance(spec, str):
                print(f"{kind}: skipped, {spec}")
                continue
            try:
                runs.append(await measure(f"ours, {spec.label}", "ours", spec, args.cycles,
                                          history))
            finally:
                await drop_store(spec)
    base = runs[0].growth_per_1000()
    print(f"\nChurn: {args.cycles} cycles, {LANES} clients at a time (recover then leave x2, "
          f"drop for good, forged pid/offset); max_disconnection_duration {WINDOW:g} s")
    print(table(
        ["server", "cycles", "errors", "recovered", "RSS MB/1000 cycles", "vs stock",
         "RSS MB at end", "objects/1000 cycles", "recent history MB",
         "sockets/rooms/registry at end", "sessions after", "packets after",
         "s until purged"],
        [[r.label, r.cycles, r.errors, f"{r.recovered}/{r.tried}" if r.tried else "-",
          r.growth_per_1000(), f"{r.growth_per_1000() - base:+.2f} MB",
          r.end["rss"] / 2**20, r.objects_per_1000(),
          r.end["recent_bytes"] / 2**20 if "recent_bytes" in r.end else "-",
          f"{r.end['eio_sockets']}/{r.end['rooms']}/{r.end.get('registry', '-')}",
          r.after.get("sessions", "-"), r.after.get("packets", "-"), r.purge_seconds]
         for r in runs]))
    for r in runs:
        print(f"{r.label}: tracked objects that grew most over the second half: "
              f"{r.grown_types() or 'none'}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--stores", nargs="+", default=["memory", "sqlite", "postgres", "redis"],
                        choices=("memory", "sqlite", "postgres", "redis"))
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "URL"), help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    parser.add_argument("--history-bytes", type=int, default=None,
                        help="history_cache_bytes of our servers (default: the server's, "
                             "32 MiB); a small one fills early, so that the second half's "
                             "growth is what is not bounded")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        asyncio.run(serve(arguments.serve[0], arguments.serve[1], arguments.schema,
                          arguments.history_bytes))
    else:
        asyncio.run(main(arguments))
