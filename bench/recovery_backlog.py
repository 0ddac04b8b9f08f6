"""Recovery with a backlog: what a recovery costs when the rest of the app kept emitting.

Per server (JS socket.io 4.8 as the reference, ours on each store) and per backlog K:
``--clients`` clients (in ``--client-procs`` processes, bench/_clients.py's raw protocol
client, which sends what the official JS client sends) in room "rec" get one event live
(so each holds an offset), drop their transports abruptly; the server emits K events to
a room nobody is in (stored: each is a packet of the history), then ``--owed`` events to
"rec"; all clients reconnect at once with pid and offset. Figures: how many recovered,
and the p95 of each client's time from its reconnect until it had its ``--owed`` events.
Each recovered client must get exactly those. Every cell is measured ``--rounds`` times,
servers alternating within a round; the table shows the median p95.

A replay now reads what its socket may be owed through the store's target index, so the
p95 should not grow with K. Targets printed at the end: every store recovers every
client at every K; at K = 10^5 the p95 is <= 1.0x the JS server's at 10^5 and <= 1.5x
the store's own at K = 0.

    python bench/recovery_backlog.py                                  # K = 0, 10^4, 10^5
    python bench/recovery_backlog.py --backlogs 0,100000,1000000 --servers js,postgres

``--fill bulk`` writes the K unrelated packets straight into a SQL store's tables (one
statement per table, as another node's appends would leave them: packets, their target
rows, the counter) instead of emitting them through the server, and waits until the
server's follower delivered them: a fill of 10^6 takes seconds instead of minutes.

    python bench/recovery_backlog.py --servers postgres --backlogs 0,1000000 --fill bulk

The Redis store keeps ``maxlen`` packets (default 10^5, approximate): the bench sets it
to hold the backlog, as a deployment with that rate would.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
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

LIMIT = 600.0  # seconds any phase may take
EMIT_CHUNK = 50_000  # backlog events per /emit request (the server gathers them at once)
SERVERS = {  # key: (label, node kind, store kind or None)
    "js": ("JS socket.io 4.8, memory", "js", None),
    "memory": ("ours, memory", "ours", "memory"),
    "sqlite": ("ours, SQLite", "ours", "sqlite"),
    "postgres": ("ours, PostgreSQL", "ours", "postgres"),
    "redis": ("ours, Redis", "ours", "redis"),
}


async def connect(node: Node, args: argparse.Namespace) -> list[ClientProc]:
    procs = await start_clients(args.client_procs)
    try:
        await asyncio.gather(*(
            proc.cmd(reply_within=LIMIT, cmd="connect", url=node.url, n=n, room="rec",
                     durable=True, where=False, client="raw")
            for proc, n in zip(procs, split(args.clients, args.client_procs), strict=True)))
    except BaseException:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
        raise
    return procs


async def emit(node: Node, count: int, room: str) -> None:
    for start in range(0, count, EMIT_CHUNK):
        await node.post("/emit", {"count": min(EMIT_CHUNK, count - start), "room": room,
                                  "window": 100}, within=LIMIT)


def profile_path(directory: str, name: str) -> str:
    return str(Path(directory).resolve() / f"{name}.prof")


async def bulk_fill(node: Node, spec: StoreSpec, count: int) -> None:
    """``count`` packets to room "nobody" written into the store's tables in one
    transaction (seqs from the counter, as an append takes them), then wait until the
    server delivered them (its follower reads them as another node's packets)."""
    from durable_adapter._codec import DEFAULT_CODEC
    from durable_adapter.stores.sql.schema import PREFIX

    payload = DEFAULT_CODEC.encode(["ev", {"i": 0, "pad": "x" * 100}])
    if spec.url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(spec.url.split("///", 1)[1], isolation_level=None, timeout=60)
        try:
            db.execute("BEGIN IMMEDIATE")
            top = db.execute(f"UPDATE {PREFIX}counter SET top = top + ? WHERE id = 1 "
                             "RETURNING top", (count,)).fetchone()[0]
            series = ("WITH RECURSIVE g(s) AS (SELECT ? UNION ALL SELECT s + 1 FROM g "
                      "WHERE s < ?) ")
            db.execute(series + f"INSERT INTO {PREFIX}packets (seq, namespace, payload, rooms,"
                       " except_rooms, created_at) SELECT s, '/', ?, '[\"nobody\"]', '[]', ?"
                       " FROM g", (top - count + 1, top, payload, time.time()))
            db.execute(series + f"INSERT INTO {PREFIX}packet_targets (namespace, target, seq)"
                       " SELECT '/', '#nobody', s FROM g", (top - count + 1, top))
            db.execute("COMMIT")
        finally:
            db.close()
    else:
        import asyncpg

        db = await asyncpg.connect(_pg_dsn())
        try:
            async with db.transaction():
                await db.execute(f'SET LOCAL search_path TO "{spec.schema}"')
                top = await db.fetchval(f"UPDATE {PREFIX}counter SET top = top + $1 "
                                        "WHERE id = 1 RETURNING top", count)
                await db.execute(
                    f"INSERT INTO {PREFIX}packets (seq, namespace, payload, rooms, "
                    "except_rooms, created_at) SELECT g, '/', $3, '[\"nobody\"]', '[]', $4 "
                    "FROM generate_series($1::bigint, $2::bigint) AS g",
                    top - count + 1, top, payload, time.time())
                await db.execute(
                    f"INSERT INTO {PREFIX}packet_targets (namespace, target, seq) "
                    "SELECT '/', '#nobody', g FROM generate_series($1::bigint, $2::bigint) g",
                    top - count + 1, top)
        finally:
            await db.close()
    deadline = time.monotonic() + LIMIT
    while (await node.get("/delivered"))["delivered"] < top:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not deliver the bulk fill in time")
        await asyncio.sleep(0.2)


async def one_backlog(node: Node, args: argparse.Namespace, backlog: int, ours: bool,
                      spec: StoreSpec | None) -> tuple[int, list[float], float]:
    """Clients get one event live, drop, miss ``backlog`` unrelated + ``owed`` events,
    reconnect at once. Returns how many recovered, their reconnect-to-last-owed-event
    seconds, and the seconds the backlog took to emit."""
    procs = await connect(node, args)
    try:
        await on_all(procs, reply_within=LIMIT, cmd="arm", total=1)
        await emit(node, 1, "rec")
        results = await on_all(procs, reply_within=LIMIT + 10, cmd="wait", within=LIMIT)
        if any(d is None for r in results for d in r["done"]):
            raise RuntimeError("not every client got its live event")
        await on_all(procs, reply_within=LIMIT, cmd="drop")
        t0 = time.monotonic()
        if args.fill == "bulk" and backlog and spec is not None \
                and spec.url.startswith(("sqlite", "postgresql")):
            await bulk_fill(node, spec, backlog)
        else:
            await emit(node, backlog, "nobody")
        filled = time.monotonic() - t0
        await emit(node, args.owed, "rec")
        await asyncio.sleep(args.settle)
        gc_before = await node.get("/gc?types=1") if args.gc and ours else None
        if args.profile and ours:
            await node.post("/profile", {"path": profile_path(args.profile, node.name)})
        answers = await on_all(procs, reply_within=LIMIT, cmd="reconnect", url=node.url,
                               total=args.owed)
        recovered = sum(a["recovered"] for a in answers)
        if not recovered:
            return 0, [], filled
        results = await on_all(procs, reply_within=LIMIT + 10, cmd="wait", within=LIMIT)
        if args.profile and ours:
            await node.post("/profile", {"path": None})
        if gc_before is not None:
            after = await node.get("/gc")
            pauses = [f"gen{g} {after['counts'][g] - gc_before['counts'][g]}x "
                      f"{(after['seconds'][g] - gc_before['seconds'][g]) * 1000:.0f} ms"
                      for g in range(3)]
            print(f"    gc over the reconnects: {', '.join(pauses)}; "
                  f"{gc_before['objects']:,} objects tracked before, most: "
                  f"{', '.join(f'{name} {n}' for name, n in gc_before['types'][:6])}",
                  flush=True)
        counts = [c for r in results for c in r["counts"]]
        done = [d for r in results for d in r["done"]]
        starts = [s for r in results for s in r["started"]]
        if any(d is None for d in done) or any(c != args.owed for c in counts):
            raise RuntimeError(f"recovered clients got {min(counts, default=0)}.."
                               f"{max(counts, default=0)} events, expected {args.owed}")
        return recovered, [d - s for d, s in zip(done, starts, strict=True)], filled
    finally:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)


async def measure(key: str, tmp: Path, args: argparse.Namespace, backlog: int
                  ) -> dict[str, Any] | str:
    """One cell: a fresh server (and store) on ``key``, one drop and recovery."""
    _, kind, store_kind = SERVERS[key]
    spec: StoreSpec | None = None
    if store_kind is not None:
        made = await make_store(store_kind, tmp, f"rb{key}")
        if isinstance(made, str):
            return made
        spec = made
        if store_kind == "redis":  # keep the whole backlog (maxlen is approximate)
            spec.url += f"&maxlen={2 * backlog + 10_000}"
    try:
        node = await start_node(kind, spec, name=f"{key}-{backlog}")
        try:
            n, each, filled = await one_backlog(node, args, backlog, kind == "ours", spec)
        finally:
            await node.stop()
    finally:
        if spec is not None:
            await drop_store(spec)
    p95 = pct(each, 95) * 1000 if each else float("nan")
    print(f"  {key} K={backlog}: {n}/{args.clients} recovered, p95 {p95:.0f} ms "
          f"(backlog emitted in {filled:.1f} s)", flush=True)
    return {"n": n, "p95": p95}


async def run_all(keys: list[str], tmp: Path, args: argparse.Namespace, backlogs: list[int]
                  ) -> dict[str, dict[int, dict[str, Any]]]:
    """Every cell ``--rounds`` times, servers alternating within each round; per cell the
    median p95 and the fewest recovered."""
    cells: dict[str, dict[int, list[dict[str, Any]]]] = {}
    skipped: set[str] = set()
    for _ in range(args.rounds):
        for backlog in backlogs:
            for key in keys:
                if key in skipped:
                    continue
                got = await measure(key, tmp, args, backlog)
                if isinstance(got, str):
                    print(f"note: {key} skipped, {got}")
                    skipped.add(key)
                    continue
                cells.setdefault(key, {}).setdefault(backlog, []).append(got)
    return {key: {backlog: {"n": min(r["n"] for r in runs),
                            "p95": statistics.median(r["p95"] for r in runs)}
                  for backlog, runs in by_k.items()}
            for key, by_k in cells.items()}


def report(results: dict[str, dict[int, dict[str, Any]]], args: argparse.Namespace,
           backlogs: list[int]) -> None:
    rows = []
    for key, by_k in results.items():
        for backlog in backlogs:
            r = by_k[backlog]
            js = results.get("js", {}).get(backlog)
            own0 = by_k.get(0)
            rows.append([SERVERS[key][0], backlog, f"{r['n']}/{args.clients}", r["p95"],
                         f"{r['p95'] / js['p95']:.2f}x" if js and key != "js" else "-",
                         f"{r['p95'] / own0['p95']:.2f}x" if own0 else "-"])
    print(f"recovery with a backlog: {args.clients} clients in a room drop, the server "
          f"stores K unrelated packets + {args.owed} for the room, all reconnect at once; "
          f"median p95 of {args.rounds} rounds, fewest recovered")
    print(table(["server", "K unrelated", "recovered", "p95 ms", "vs JS at K",
                 "vs own K=0"], rows))
    print("targets:")
    for key, by_k in results.items():
        if key == "js":
            continue
        every = all(r["n"] == args.clients for r in by_k.values())
        print(f"  {SERVERS[key][0]}: every client recovered at every K: "
              f"{'met' if every else 'MISSED'}")
        at = by_k.get(100_000)
        js = results.get("js", {}).get(100_000)
        if at is not None and js is not None:
            ok = at["p95"] <= js["p95"]
            print(f"    p95 at 10^5 <= 1.0x JS at 10^5: {at['p95'] / js['p95']:.2f}x "
                  f"{'met' if ok else 'MISSED'}")
        if at is not None and 0 in by_k:
            ok = at["p95"] <= 1.5 * by_k[0]["p95"]
            print(f"    p95 at 10^5 <= 1.5x own at 0: {at['p95'] / by_k[0]['p95']:.2f}x "
                  f"{'met' if ok else 'MISSED'}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--backlogs", default="0,10000,100000",
                        help="unrelated packets while away, comma-separated")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--owed", type=int, default=10, help="events each client missed")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds between the last emit and the reconnects (lets the "
                             "database finish the backlog's background work first)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements per cell (median p95 shown)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="write a cProfile of each server's event loop thread over the "
                             "reconnects to DIR/<server>-<K>.prof (for development: slower)")
    parser.add_argument("--fill", choices=("emit", "bulk"), default="emit",
                        help="how the unrelated packets are stored: emitted through the "
                             "server, or (SQL stores) written into the tables at once")
    parser.add_argument("--gc", action="store_true",
                        help="print the garbage collections of our servers over the reconnects")
    args = parser.parse_args()
    backlogs = [int(k) for k in args.backlogs.split(",")]

    with scratch_dir() as tmp:
        results = await run_all([k.strip() for k in args.servers.split(",")], tmp, args,
                                backlogs)
    report(results, args, backlogs)


if __name__ == "__main__":
    asyncio.run(main())
