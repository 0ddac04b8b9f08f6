"""Ours against JS socket.io (and plain python-socketio), side by side in one run.

Every figure of issue 10's table, measured in one run.

Columns (servers, each its own process on 127.0.0.1, measured one after the other with
the same load generator, bench/_clients.py's raw protocol client, which speaks what the
official JS client sends, websocket, no compression):

* JS socket.io 4.8 (bench/js/server.js: in-memory adapter, connection state recovery
  on; ``npm ci`` in bench/js first), the reference;
* plain python-socketio, no recovery;
* ours on memory, SQLite and PostgreSQL.

Figures (rows):

* fan-out: one handler emits ``--events`` events to a room of ``--clients`` clients, in
  a loop awaiting each emit, then with ``--window`` emits in flight (deliveries/s);
* one emit to a room with no client, ms each: sequential awaited ``await sio.emit(...)``
  and ``--window`` in flight (what the emit itself costs, recipients aside);
* a raw single-row commit through the same driver (aiosqlite / asyncpg), one INSERT in
  its own transaction (autocommit), ms each: the floor for an emit that commits;
* recovery: ``--rec-clients`` clients miss ``--missed`` events and reconnect at once; p95
  of the time from a client's reconnect until it has them all;
* storm: ``--storm`` clients drop, ``--storm-missed`` events are emitted, and they
  reconnect spread evenly over ``--storm-spread`` s; ms from the first reconnect until
  the last client has recovered everything it missed;
* store append rate (``bench/append.py``'s two figures): ``store.append()`` by 1000
  concurrent tasks against a raw batched INSERT of the same rows (500 per transaction).

Then each figure as ratios against the baselines of the same run (JS, python-socketio,
the raw commit, the raw INSERT), and issue 10's targets, met or missed.

    python bench/against_js.py              # the issue's sizes, about 10 minutes
    python bench/against_js.py --quick      # small sizes, about 2 minutes
    python bench/against_js.py --servers js,postgres --events 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    ClientProc,
    Node,
    StoreSpec,
    _pg_dsn,
    drop_store,
    make_store,
    on_all,
    pct,
    scratch_dir,
    split,
    start_clients,
    start_node,
    table,
)
from append import raw_rate, raw_rows, store_rate
from fanout import ROOM, Row, measure

from durable_adapter.stores.sql.schema import PREFIX

LIMIT = 300.0  # seconds any phase may take (2000 awaited emits at 40 ms on a busy machine)
SERVERS = {  # key: (column label, node kind, store kind or None)
    "js": ("JS socket.io 4.8, memory", "js", None),
    "plain": ("python-socketio", "plain", None),
    "memory": ("ours, memory", "ours", "memory"),
    "sqlite": ("ours, SQLite", "ours", "sqlite"),
    "postgres": ("ours, PostgreSQL", "ours", "postgres"),
}
QUICK = {"clients": 50, "events": 200, "emits": 50, "commits": 50, "rec_clients": 20,
         "missed": 200, "storm": 200, "append_rows": 2000}


# -- figures per server -----------------------------------------------------------------


async def connect(node: Node, nprocs: int, clients: int, room: str, durable: bool
                  ) -> list[ClientProc]:
    procs = await start_clients(nprocs)
    try:
        answers = await asyncio.gather(*(
            proc.cmd(reply_within=LIMIT, cmd="connect", url=node.url, n=n, room=room,
                     durable=durable, where=False, client="raw")
            for proc, n in zip(procs, split(clients, nprocs), strict=True)))
    except BaseException:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
        raise
    if any(a["compress"] for a in answers):
        raise RuntimeError("a websocket negotiated compression")
    return procs


async def fanout(node: Node, label: str, spec: StoreSpec | None, durable: bool,
                 args: argparse.Namespace) -> dict[str, float]:
    procs = await connect(node, args.client_procs, args.clients, ROOM, durable)
    try:
        row = Row(label, node, procs, spec)
        await measure(row, args.clients, 10, args.window, args.size, LIMIT)  # warm-up
        return {"fan_loop": await measure(row, args.clients, args.events, 1, args.size,
                                          LIMIT),
                "fan_window": await measure(row, args.clients, args.events, args.window,
                                            args.size, LIMIT)}
    finally:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)


async def emit_cost(node: Node, args: argparse.Namespace) -> dict[str, float]:
    """ms per emit to a room nobody is in, awaited one by one and ``window`` at a time."""
    out = {}
    for key, window in (("emit_seq", 1), ("emit_window", args.window)):
        reply = await node.post("/emit", {"count": args.emits, "room": "nobody",
                                          "window": window, "size": args.size},
                                within=LIMIT)
        out[key] = reply["elapsed"] / args.emits * 1000
    return out


async def live(node: Node, procs: list[ClientProc], room: str, count: int) -> None:
    """``count`` events delivered live to every client: each then holds an offset (the
    JS server recovers only a client that names a packet it still buffers)."""
    await on_all(procs, reply_within=LIMIT, cmd="arm", total=count)
    await node.post("/emit", {"count": count, "room": room, "window": 100}, within=LIMIT)
    results = await on_all(procs, reply_within=LIMIT + 10, cmd="wait", within=LIMIT)
    if any(d is None for r in results for d in r["done"]):
        raise RuntimeError(f"live: not every client got {count} events")


async def drop_and_recover(node: Node, procs: list[ClientProc], room: str, missed: int,
                           spread: float) -> tuple[int, list[float], float, float]:
    """Drop every client, emit ``missed`` events, reconnect (spread over ``spread`` s).
    Returns how many recovered, each one's seconds from its reconnect until it had every
    missed event, the seconds from the first reconnect until the last had them, and the
    server's CPU seconds from the reconnects until then."""
    await on_all(procs, reply_within=LIMIT, cmd="drop")
    await node.post("/emit", {"count": missed, "room": room, "window": 100}, within=LIMIT)
    cpu = await node.cpu()
    answers = await on_all(procs, reply_within=LIMIT, cmd="reconnect", url=node.url,
                           total=missed, spread=spread)
    recovered = sum(a["recovered"] for a in answers)
    if not recovered:
        return 0, [], float("nan"), float("nan")
    results = await on_all(procs, reply_within=LIMIT + 10, cmd="wait", within=LIMIT)
    cpu = await node.cpu() - cpu
    starts = [s for r in results for s in r["started"]]
    done = [d for r in results for d in r["done"]]
    counts = [c for r in results for c in r["counts"]]
    if any(d is None for d in done) or any(c != missed for c in counts):
        raise RuntimeError(f"recovered clients got {min(counts, default=0)}.."
                           f"{max(counts, default=0)} events, expected {missed}")
    each = [d - s for d, s in zip(done, starts, strict=True)]
    whole = max(done) - min(starts) if done else float("nan")
    return recovered, each, whole, cpu


async def recovery(node: Node, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    procs = await connect(node, args.client_procs, args.rec_clients, "rec", True)
    try:
        await live(node, procs, "rec", 1)
        n, each, _, _ = await drop_and_recover(node, procs, "rec", args.missed, 0.0)
        out["rec_p95"] = pct(each, 95) * 1000 if each else "-"
        out["rec_n"] = f"{n}/{args.rec_clients}"
    finally:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
    procs = await connect(node, args.storm_procs, args.storm, "storm", True)
    try:
        await live(node, procs, "storm", 1)
        n, _, whole, cpu = await drop_and_recover(node, procs, "storm", args.storm_missed,
                                                  args.storm_spread)
        out["storm"] = whole * 1000 if n else "-"
        out["storm_cpu"] = cpu * 1000 if n else "-"
        out["storm_n"] = f"{n}/{args.storm}"
    finally:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
    return out


async def raw_commit_ms(spec: StoreSpec, commits: int, size: int) -> float:
    """ms per single-row INSERT committed on its own, straight through the driver."""
    rows = raw_rows(commits, size)
    columns = "(seq, namespace, payload, rooms, except_rooms, created_at)"
    if spec.url.startswith("sqlite"):
        import aiosqlite

        path = Path(spec.url.split("///", 1)[1])
        async with aiosqlite.connect(path, isolation_level=None) as db:
            await db.execute("PRAGMA journal_mode = WAL")  # the store's settings
            await db.execute("PRAGMA synchronous = NORMAL")
            sql = f"INSERT INTO {PREFIX}packets {columns} VALUES (?, ?, ?, ?, ?, ?)"
            t0 = time.monotonic()
            for row in rows:
                await db.execute(sql, row)
            return (time.monotonic() - t0) / commits * 1000
    import asyncpg

    db = await asyncpg.connect(_pg_dsn())
    try:
        sql = (f'INSERT INTO "{spec.schema}".{PREFIX}packets {columns} '
               "VALUES ($1, $2, $3, $4, $5, $6)")
        await db.execute(f'DELETE FROM "{spec.schema}".{PREFIX}packets')
        t0 = time.monotonic()
        for row in rows:
            await db.execute(sql, *row)
        return (time.monotonic() - t0) / commits * 1000
    finally:
        await db.close()


async def driver_figures(kind: str, tmp: Path, args: argparse.Namespace
                         ) -> dict[str, float]:
    """Raw commit, store append and raw batched INSERT, each on a fresh database."""
    out: dict[str, float] = {}
    jobs: list[tuple[str, Callable[[StoreSpec], Any]]] = [
        ("commit", lambda s: raw_commit_ms(s, args.commits, args.size)),
        ("raw_insert", lambda s: raw_rate(s, args.append_rows, args.size)),
        ("append", lambda s: store_rate(s, args.append_rows, 1000, args.size)),
    ]
    for key, job in jobs:
        spec = await make_store(kind, tmp, f"i10{key}")
        if isinstance(spec, str):
            return out
        try:
            out[key] = await job(spec)
        finally:
            await drop_store(spec)
    return out


async def run_server(key: str, tmp: Path, args: argparse.Namespace
                     ) -> dict[str, Any] | str:
    label, kind, store_kind = SERVERS[key]
    spec: StoreSpec | None = None
    if store_kind is not None:
        made = await make_store(store_kind, tmp, f"i10{key}")
        if isinstance(made, str):
            return made
        spec = made
    figures: dict[str, Any] = {}
    try:
        node = await start_node(kind, spec, name=key)
        try:
            durable = kind != "plain"
            figures.update(await fanout(node, label, spec, durable, args))
            figures.update(await emit_cost(node, args))
            if durable:
                figures.update(await recovery(node, args))
        finally:
            await node.stop()
    finally:
        if spec is not None:
            await drop_store(spec)
    if store_kind in ("sqlite", "postgres"):
        figures.update(await driver_figures(store_kind, tmp, args))
    print(f"  {label}: done", flush=True)
    return figures


# -- the table ------------------------------------------------------------------------------


def fmt_ratio(value: Any, base: Any) -> str:
    if (not isinstance(value, float) or not isinstance(base, float) or not base
            or value != value or base != base):
        return "-"
    return f"{value / base:.2f}x"


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    keys = [k for k in SERVERS if k in results]
    js, plain = results.get("js", {}), results.get("plain", {})

    def cells(fig: str) -> list[Any]:
        return [results[k].get(fig, "-") for k in keys]

    def vs(fig: str, base: dict[str, Any], base_fig: str | None = None) -> list[str]:
        return [fmt_ratio(results[k].get(fig), base.get(base_fig or fig)) for k in keys]

    def vs_own(fig: str, base_fig: str) -> list[str]:
        return [fmt_ratio(results[k].get(fig), results[k].get(base_fig)) for k in keys]

    def own_raw(fig: str, base_fig: str) -> list[str]:
        """ours on memory against the raw figure of no driver: '-'."""
        return [fmt_ratio(results[k].get(fig), results[k].get(base_fig))
                if k in ("sqlite", "postgres") else "-" for k in keys]

    fan = f"fan-out {args.events} events to a room of {args.clients}"
    rows: list[list[Any]] = [
        [f"{fan}, one handler awaiting each emit (deliveries/s)", *cells("fan_loop")],
        ["  vs JS", *vs("fan_loop", js)],
        ["  vs python-socketio", *vs("fan_loop", plain)],
        [f"{fan}, {args.window} emits in flight (deliveries/s)", *cells("fan_window")],
        ["  vs JS", *vs("fan_window", js)],
        ["  vs python-socketio", *vs("fan_window", plain)],
        ["one handler's `await sio.emit(...)`, sequential, ms each", *cells("emit_seq")],
        ["  vs raw single-row commit", *own_raw("emit_seq", "commit")],
        ["  vs python-socketio", *vs("emit_seq", plain)],
        [f"{args.window} emits in flight, ms each", *cells("emit_window")],
        ["  vs raw single-row commit", *own_raw("emit_window", "commit")],
        ["raw single-row commit through the same driver, ms", *cells("commit")],
        [f"recovery: {args.rec_clients} clients x {args.missed} missed, p95 ms",
         *cells("rec_p95")],
        ["  recovered", *cells("rec_n")],
        ["  vs JS", *vs("rec_p95", js)],
        [f"storm: {args.storm} clients reconnect within {args.storm_spread:g} s "
         f"({args.storm_missed} missed), all recovered at ms", *cells("storm")],
        ["  recovered", *cells("storm_n")],
        ["  vs JS", *vs("storm", js)],
        ["  server CPU from the first reconnect until all recovered, ms",
         *cells("storm_cpu")],
        [f"store append, {args.append_rows:,} rows by 1000 tasks (rows/s)", *cells("append")],
        ["raw batched INSERT, 500 per transaction (rows/s)", *cells("raw_insert")],
        ["  store append / raw INSERT", *vs_own("append", "raw_insert")],
    ]
    headers = ["figure", *(SERVERS[k][0] for k in keys)]
    return table(headers, [[c if not isinstance(c, str) or c else "-" for c in r]
                           for r in rows])


def targets(results: dict[str, dict[str, Any]]) -> list[str]:
    """Issue 10's targets against this run's figures."""
    out = []

    def check(name: str, value: Any, base: Any, limit: float, at_most: bool) -> None:
        if not isinstance(value, float) or not isinstance(base, float) or not base:
            out.append(f"{name}: not measured")
            return
        r = value / base
        met = r <= limit if at_most else r >= limit
        bound = "<=" if at_most else ">="
        out.append(f"{name}: {r:.2f}x (target {bound} {limit:g}x: "
                   f"{'met' if met else 'MISSED'})")

    js, plain = results.get("js", {}), results.get("plain", {})
    for key, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        r = results.get(key, {})
        check(f"{label} sequential emit / raw commit", r.get("emit_seq"), r.get("commit"),
              1.5, True)
    pg = results.get("postgres", {})
    check("PostgreSQL fan-out (one handler) / python-socketio", pg.get("fan_loop"),
          plain.get("fan_loop"), 1.0, False)
    check("PostgreSQL fan-out (one handler) / JS (aim)", pg.get("fan_loop"),
          js.get("fan_loop"), 0.5, False)
    check("PostgreSQL recovery p95 / JS", pg.get("rec_p95"), js.get("rec_p95"), 1.5, True)
    check("memory recovery p95 / JS", results.get("memory", {}).get("rec_p95"),
          js.get("rec_p95"), 1.0, True)
    check("PostgreSQL storm / JS", pg.get("storm"), js.get("storm"), 1.5, True)
    for key, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        r = results.get(key, {})
        check(f"{label} store append / raw batched INSERT", r.get("append"),
              r.get("raw_insert"), 0.5, False)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma-separated: " + ",".join(SERVERS))
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--clients", type=int, default=200, help="fan-out room size")
    parser.add_argument("--events", type=int, default=2000, help="fan-out events")
    parser.add_argument("--window", type=int, default=100, help="emits in flight")
    parser.add_argument("--size", type=int, default=100, help="payload padding, bytes")
    parser.add_argument("--emits", type=int, default=300, help="emits timed for ms each")
    parser.add_argument("--commits", type=int, default=300, help="raw commits timed")
    parser.add_argument("--rec-clients", type=int, default=100)
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--storm", type=int, default=1000, help="clients in the storm")
    parser.add_argument("--storm-missed", type=int, default=10)
    parser.add_argument("--storm-spread", type=float, default=1.0)
    parser.add_argument("--append-rows", type=int, default=20_000)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--storm-procs", type=int, default=4)
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    for key in ("clients", "events", "emits", "commits", "rec_clients", "missed", "storm",
                "append_rows"):
        if not 1 <= getattr(args, key) <= 100_000:
            parser.error(f"--{key.replace('_', '-')} must be 1..100000")

    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    with scratch_dir() as tmp:
        for key in args.servers.split(","):
            key = key.strip()
            if key not in SERVERS:
                parser.error(f"unknown server {key!r}")
            outcome = await run_server(key, tmp, args)
            if isinstance(outcome, str):
                notes.append(f"{SERVERS[key][0]}: skipped, {outcome}")
            else:
                results[key] = outcome

    print(f"against_js: one run, servers one after the other on 127.0.0.1, raw protocol "
          f"clients (bench/_clients.py), websocket, no compression, payload ~{args.size} B; "
          f"{time.monotonic() - started:.0f} s; load average {load_before:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores)")
    print(report(results, args))
    for line in targets(results) + notes:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
