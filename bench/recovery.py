"""Recovery: clients that missed events reconnect at once and get every missed event.

Per store:

* 100 clients (in ``--client-procs`` processes) in one room drop their transports
  abruptly; the server emits 1000 events to the room; all reconnect at once with their
  pid and offset. Figure: per client, the time from its reconnect until it has received
  all 1000 missed events (p50/p95/max). Each recovered client must get exactly 1000; a
  client refused (fresh session; the server process logs why) is counted apart.
* 1 client in another room misses 10^4 events, reconnects; time until it has them all.

Baseline, measured in the same run on the same server: the same clients receiving the
same number of events live (time from the emit request until the last client got the
last one), so "vs live" says how a replay compares with delivering those events as they
happen. Ratios against the memory store are shown too.

    python bench/recovery.py                    # memory, SQLite, PostgreSQL
    python bench/recovery.py --server sync      # durable_adapter.Server (threads, Werkzeug)
    python bench/recovery.py --stores postgres --clients 100 --missed 1000 --solo 10000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from _common import (
    ClientProc,
    Node,
    drop_store,
    make_store,
    on_all,
    pct,
    ratio,
    scratch_dir,
    split,
    start_clients,
    start_node,
    table,
)

LIMIT = 90.0  # seconds any phase may take


async def live_time(node: Node, procs: list[ClientProc], room: str, count: int,
                    total: int) -> float:
    """Seconds from the emit request until the last client got ``count`` live events."""
    await on_all(procs, cmd="arm", total=total)
    t0 = time.monotonic()
    await node.post("/emit", {"count": count, "room": room, "window": 100}, within=LIMIT)
    results = await on_all(procs, reply_within=LIMIT + 10, cmd="wait", within=LIMIT)
    done = [t for r in results for t in r["done"]]
    if any(t is None for t in done):
        raise RuntimeError(f"live: not every client got {total} events")
    return max(done) - t0


async def recover(node: Node, procs: list[ClientProc], room: str, missed: int
                  ) -> tuple[int, list[float]]:
    """Drop, emit ``missed`` events, reconnect at once: how many recovered, and for each
    the seconds from its reconnect until it had every missed event."""
    await on_all(procs, cmd="drop")
    await node.post("/emit", {"count": missed, "room": room, "window": 100}, within=LIMIT)
    answers = await on_all(procs, reply_within=LIMIT, cmd="reconnect", url=node.url,
                           total=missed)
    recovered = sum(a["recovered"] for a in answers)
    results = await on_all(procs, reply_within=LIMIT + 10, cmd="wait", within=LIMIT)
    await asyncio.sleep(0.3)  # anything beyond the expected count would show up now
    counts = await on_all(procs, reply_within=LIMIT, cmd="wait", within=0)
    got = [c for r in counts for c in r["counts"]]
    if any(c != missed for c in got):
        raise RuntimeError(f"clients got {min(got)}..{max(got)} events, expected {missed}")
    return recovered, [done - started for r in results
                       for done, started in zip(r["done"], r["started"], strict=True)]


async def run_store(kind: str, label: str, spec: Any, args: argparse.Namespace
                    ) -> dict[str, Any]:
    node = await start_node("sync-ours" if args.server == "sync" else "ours", spec,
                            name=label)
    procs = await start_clients(args.client_procs)
    solo = (await start_clients(1))[0]
    try:
        await asyncio.gather(*(
            proc.cmd(cmd="connect", url=node.url, n=n, room="many", durable=True,
                     where=False, client=args.client)
            for proc, n in zip(procs, split(args.clients, args.client_procs), strict=True)))
        await solo.cmd(cmd="connect", url=node.url, n=1, room="solo", durable=True,
                       where=False, client=args.client)
        # warm-up, then the live baselines (cumulative totals before the drops)
        await live_time(node, procs, "many", 10, 10)
        live_many = await live_time(node, procs, "many", args.missed, 10 + args.missed)
        live_solo = await live_time(node, [solo], "solo", args.solo, args.solo)
        recovered, many = await recover(node, procs, "many", args.missed)
        solo_recovered, single = await recover(node, [solo], "solo", args.solo)
    finally:
        await asyncio.gather(node.stop(), solo.stop(), *(p.stop() for p in procs),
                             return_exceptions=True)
    return {"label": label, "live_many": live_many, "many": many, "live_solo": live_solo,
            "solo": single[0] if single else float("nan"),
            "recovered": f"{recovered}/{args.clients}, {solo_recovered}/1"}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--missed", type=int, default=1000, help="events each client missed")
    parser.add_argument("--solo", type=int, default=10_000,
                        help="events the single client missed")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--client", choices=("raw", "sio"), default="raw",
                        help="raw: minimal protocol client (default); sio: "
                             "durable_adapter.AsyncClient")
    parser.add_argument("--stores", default="memory,sqlite,postgres")
    parser.add_argument("--server", choices=("async", "sync"), default="async",
                        help="async: AsyncServer on aiohttp (default); sync: "
                             "durable_adapter.Server under Werkzeug's threaded server")
    args = parser.parse_args()

    results: list[dict[str, Any]] = []
    notes: list[str] = []
    with scratch_dir() as tmp:
        for kind in args.stores.split(","):
            spec = await make_store(kind.strip(), tmp, "recovery")
            if isinstance(spec, str):
                notes.append(f"{kind}: skipped, {spec}")
                continue
            try:
                results.append(await run_store(kind, spec.label, spec, args))
            finally:
                await drop_store(spec)

    print(f"recovery ({args.server} server): {args.clients} clients each missed "
          f"{args.missed} events and reconnect at once; 1 client missed {args.solo} "
          f"({args.client} clients, websocket)")
    base = results[0] if results else None
    rows = []
    for r in results:
        many = r["many"]
        rows.append([r["label"], r["recovered"], pct(many, 50), pct(many, 95), max(many),
                     r["live_many"],
                     ratio(max(many), r["live_many"]),
                     ratio(max(many), max(base["many"])) if base else "-",
                     r["solo"], r["live_solo"], ratio(r["solo"], r["live_solo"]),
                     ratio(r["solo"], base["solo"]) if base else "-"])
    print(table(["store", "recovered", "p50 s", "p95 s", "max s", "live s", "max vs live",
                 f"max vs {base['label'] if base else '-'}",
                 f"1x{args.solo} s", "live s", "vs live",
                 f"vs {base['label'] if base else '-'}"], rows))
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    asyncio.run(main())
