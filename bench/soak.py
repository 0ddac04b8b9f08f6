"""Soak: traffic with random drops for some minutes while the cleanup worker runs.

An in-process server on 127.0.0.1 (SQLite in a temporary directory by default, or the
SQL store given by ``--store``) with ``--clients`` clients that emit chat messages and,
every few seconds, either lose their transport and recover, or vanish for good (leaving
a session that only expires). ``durable-adapter cleanup`` runs beside it as a separate
process. Every ``--report-every`` seconds one line shows the table sizes: with the worker
running they stay bounded (about retention x emit rate packets, and the sessions that
have not expired yet) instead of growing with the run.

Usage::

    .venv/bin/python bench/soak.py --minutes 1
    .venv/bin/python bench/soak.py --minutes 5 --store postgresql+asyncpg://user@host/db
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

import durable_adapter
from durable_adapter.migrate import migrate
from durable_adapter.stores.sql.schema import counter, packets, sessions

HOST = "127.0.0.1"  # the soak never listens anywhere else
MAX_MINUTES = 60.0
MAX_CLIENTS = 200
WAIT = 10.0  # seconds for one connect or disconnect


@dataclass
class Stats:
    emits: int = 0
    drops: int = 0
    abandoned: int = 0
    recovered: int = 0
    fresh: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    rows: list[tuple[float, int, int, int, int]] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="run time (max 60)")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients (max 200)")
    parser.add_argument("--rate", type=float, default=2.0, help="emits per client per second")
    parser.add_argument("--store", help="SQL store URL (default: SQLite in a temp dir)")
    parser.add_argument("--max-disconnection-duration", type=float, default=10.0,
                        help="the server's recovery window, seconds")
    parser.add_argument("--retention", type=float, default=20.0, help="seconds")
    parser.add_argument("--cleanup-interval", type=float, default=5.0, help="seconds")
    parser.add_argument("--report-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be in (0, {MAX_MINUTES:g}]")
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be in [1, {MAX_CLIENTS}]")
    if args.rate <= 0:
        parser.error("--rate must be > 0")
    return args


async def serve(sio: durable_adapter.AsyncServer) -> tuple[web.AppRunner, str]:
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, shutdown_timeout=2.0)
    await site.start()
    return runner, f"http://{HOST}:{runner.addresses[0][1]}"


def make_server(store: str, window: float, stats: Stats) -> durable_adapter.AsyncServer:
    sio = durable_adapter.AsyncServer(
        store=store, async_mode="aiohttp",
        connection_state_recovery={"max_disconnection_duration": window})

    @sio.event
    async def connect(sid: str, environ: object, auth: object) -> None:
        failure = sio.recovery_failure(sid)
        if failure is not None:
            stats.refused[failure.value] += 1

    @sio.event
    async def chat(sid: str, text: str) -> None:
        await sio.emit("msg", {"from": sid, "text": text})

    return sio


async def drop_transport(client: durable_adapter.AsyncClient) -> None:
    """Close the WebSocket abruptly, as a network loss would (no DISCONNECT packet)."""
    await client.eio.ws.close()


async def client_loop(url: str, index: int, stats: Stats, stop: asyncio.Event,
                      rate: float, rng: random.Random, http: aiohttp.ClientSession) -> None:
    """Connect, talk, then drop (and recover) or vanish (and start over), until stopped."""
    while not stop.is_set():
        client = durable_adapter.AsyncClient(reconnection_delay=0.2, reconnection_delay_max=1,
                                             http_session=http, handle_sigint=False)

        @client.event
        async def connect(client: durable_adapter.AsyncClient = client) -> None:
            if client.is_recovered():
                stats.recovered += 1
            else:
                stats.fresh += 1

        client.on("msg", lambda *args: None)
        await client.connect(url, transports=["websocket"], wait_timeout=WAIT)
        try:
            while not stop.is_set():
                lifetime = time.monotonic() + rng.uniform(2.0, 8.0)
                while time.monotonic() < lifetime and not stop.is_set():
                    if client.connected:
                        with contextlib.suppress(Exception):
                            await client.emit("chat", f"client {index} says hi")
                            stats.emits += 1
                    await asyncio.sleep(rng.expovariate(rate))
                if stop.is_set() or not client.connected:
                    continue
                if rng.random() < 0.3:  # gone for good: its session only expires
                    client.reconnection = False
                    await drop_transport(client)
                    stats.abandoned += 1
                    break
                await drop_transport(client)
                stats.drops += 1  # the client reconnects by itself and recovers
        finally:
            client.reconnection = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), WAIT)
            reconnecting = getattr(client, "_reconnect_task", None)
            if reconnecting is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reconnecting, WAIT)


async def table_sizes(engine: AsyncEngine) -> tuple[int, int, int, int]:
    async with engine.connect() as connection:
        n_sessions = (await connection.execute(
            select(func.count()).select_from(sessions))).scalar_one()
        n_packets = (await connection.execute(
            select(func.count()).select_from(packets))).scalar_one()
        row = (await connection.execute(select(counter.c.top, counter.c.purged_through))).one()
    return int(n_sessions), int(n_packets), int(row.top), int(row.purged_through)


def start_cleanup(store: str, args: argparse.Namespace, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "durable_adapter", "cleanup", "--store", store,
               "--interval", str(args.cleanup_interval), "--retention", str(args.retention),
               "--max-disconnection-duration", str(args.max_disconnection_duration)]
    with log.open("wb") as out:
        return subprocess.Popen(command, stderr=out, stdout=out, env=os.environ.copy())


async def soak(args: argparse.Namespace, workdir: Path) -> Stats:
    store = args.store or f"sqlite+aiosqlite:///{workdir / 'soak.db'}"
    await migrate(store)
    stats = Stats()
    sio = make_server(store, args.max_disconnection_duration, stats)
    runner, url = await serve(sio)
    cleanup_log = workdir / "cleanup.log"
    worker = start_cleanup(store, args, cleanup_log)
    engine = create_async_engine(store, poolclass=NullPool)
    stop = asyncio.Event()
    rng = random.Random(args.seed)
    http = aiohttp.ClientSession()  # shared by every client, closed at the end
    clients = [asyncio.create_task(client_loop(url, i, stats, stop, args.rate,
                                               random.Random(rng.random()), http))
               for i in range(args.clients)]
    started = time.monotonic()
    print(f"soak: {args.clients} clients, {args.rate:g} emits/s each, "
          f"{args.minutes:g} min, store {store.split('@')[-1]}, window "
          f"{args.max_disconnection_duration:g} s, retention {args.retention:g} s, "
          f"cleanup every {args.cleanup_interval:g} s", flush=True)
    print(f"{'t (s)':>6} {'sessions':>9} {'packets':>8} {'top seq':>8} {'purged':>8} "
          f"{'emits':>7} {'drops':>6} {'gone':>5} {'recov':>6}", flush=True)
    try:
        end = started + args.minutes * 60
        while (now := time.monotonic()) < end:
            await asyncio.sleep(min(args.report_every, end - now))
            sizes = await table_sizes(engine)
            elapsed = time.monotonic() - started
            stats.rows.append((elapsed, *sizes))
            print(f"{elapsed:6.0f} {sizes[0]:9d} {sizes[1]:8d} {sizes[2]:8d} {sizes[3]:8d} "
                  f"{stats.emits:7d} {stats.drops:6d} {stats.abandoned:5d} "
                  f"{stats.recovered:6d}", flush=True)
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
        await http.close()
        worker.send_signal(signal.SIGTERM)
        status = worker.wait(timeout=30)
        await engine.dispose()
        await sio.shutdown()
        await runner.cleanup()
    removed = [line for line in cleanup_log.read_text().splitlines()
               if "expired session(s)" in line]
    print(f"cleanup worker: exit status {status}, {len(removed)} passes; last: "
          f"{removed[-1].split(': ', 1)[-1] if removed else '-'}", flush=True)
    return stats


def summarize(stats: Stats) -> None:
    if len(stats.rows) < 4:
        return
    half = len(stats.rows) // 2
    first = max(r[2] for r in stats.rows[:half])
    second = max(r[2] for r in stats.rows[half:])
    top = stats.rows[-1][3]
    print(f"packets stored: max {first} in the first half, {second} in the second half, "
          f"{top} appended in total; sessions max {max(r[1] for r in stats.rows)}; "
          f"reconnects recovered {stats.recovered} of {stats.drops} drops; "
          f"refused recoveries: {dict(stats.refused)}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="durable-soak-") as tmp:
        stats = asyncio.run(soak(args, Path(tmp)))
    summarize(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
