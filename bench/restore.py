"""Restore time against history size: 10^3 vs 10^6 packets stored.

For each SQL store (SQLite, PostgreSQL) two databases are prepared: one holding
``--small`` packets (10^3), one holding ``--big`` (10^6). The history is filled by one
raw ``INSERT ... SELECT`` into the store's own packets table (a recursive CTE on SQLite,
``generate_series`` on PostgreSQL) and the counter row set to match, then a server
process opens each. One client connects, drops its transport, misses ``--missed`` (10)
events, reconnects with its pid and offset; the figure is the time from the reconnect
until it has all 10. After the fill the SQLite WAL is checkpointed and the PostgreSQL
table vacuumed and the database checkpointed, so the fill's own write-back does not land
in the measurement. Repeated ``--repeats`` times, alternating small and big so both see
the same machine; medians shown. Target: big / small <= 1.2x.

    python bench/restore.py
    python bench/restore.py --stores postgres --big 1000000 --repeats 9
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from typing import Any

from _common import (
    StoreSpec,
    _pg_dsn,
    drop_store,
    make_store,
    median,
    on_all,
    pct,
    scratch_dir,
    start_clients,
    start_node,
    table,
)

from durable_adapter._codec import encode_value
from durable_adapter.stores.sql.schema import PREFIX

LIMIT = 60.0


async def fill(spec: StoreSpec, count: int) -> float:
    """Put ``count`` packets (seq 1..count) in the store's tables; returns seconds taken."""
    store = spec.open_store()
    await store.open()  # creates the counter and epoch rows
    await store.close()
    payload = encode_value(["ev", {"i": 0, "pad": "x" * 100}])
    now = time.time()
    t0 = time.monotonic()
    if spec.url.startswith("sqlite"):
        path = spec.url.split("///", 1)[1]

        def run() -> None:
            with sqlite3.connect(path) as db:
                db.execute(
                    f"INSERT INTO {PREFIX}packets "
                    "(seq, namespace, payload, rooms, except_rooms, created_at) "
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                    "WHERE x < ?) SELECT x, '/', ?, '[]', '[]', ? FROM c",
                    (count, payload, now))
                db.execute(f"UPDATE {PREFIX}counter SET top = ?", (count,))
            with sqlite3.connect(path) as db:
                # steady state, not the fill's after-effects: the WAL copied back now
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        await asyncio.to_thread(run)
    else:
        import asyncpg

        db = await asyncpg.connect(_pg_dsn())
        try:
            async with db.transaction():
                await db.execute(
                    f'INSERT INTO "{spec.schema}".{PREFIX}packets '
                    "(seq, namespace, payload, rooms, except_rooms, created_at) "
                    "SELECT g, '/', $2, '[]', '[]', $3 FROM generate_series(1, $1::bigint) g",
                    count, payload, now)
                await db.execute(f'UPDATE "{spec.schema}".{PREFIX}counter SET top = $1',
                                 count)
            # steady state, not the fill's after-effects: vacuumed, analysed, checkpointed
            await db.execute(f'VACUUM ANALYZE "{spec.schema}".{PREFIX}packets')
            await db.execute("CHECKPOINT")
        finally:
            await db.close()
    return time.monotonic() - t0


async def one_restore(node: Any, proc: Any, missed: int) -> float:
    await proc.cmd(cmd="drop")
    await node.post("/emit", {"count": missed, "room": "r", "window": missed}, within=LIMIT)
    answer = await proc.cmd(reply_within=LIMIT, cmd="reconnect", url=node.url, total=missed)
    if answer["recovered"] != 1:
        raise RuntimeError("the client did not recover")
    result = (await on_all([proc], reply_within=LIMIT + 5, cmd="wait", within=LIMIT))[0]
    if result["done"][0] is None:
        raise RuntimeError(f"only {result['counts'][0]} of {missed} missed events arrived")
    return float(result["done"][0] - result["started"][0])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--missed", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--stores", default="sqlite,postgres")
    args = parser.parse_args()

    rows: list[list[Any]] = []
    notes: list[str] = []
    with scratch_dir() as tmp:
        for kind in args.stores.split(","):
            specs: dict[int, StoreSpec] = {}
            try:
                for size in (args.small, args.big):
                    spec = await make_store(kind.strip(), tmp, f"restore{size}")
                    if isinstance(spec, str):
                        break
                    specs[size] = spec
                if len(specs) < 2:
                    notes.append(f"{kind}: skipped, {spec}")
                    continue
                fills = {size: await fill(spec, size) for size, spec in specs.items()}
                nodes = {size: await start_node("ours", spec, name=f"{kind}{size}")
                         for size, spec in specs.items()}
                procs = {size: (await start_clients(1))[0] for size in specs}
                times: dict[int, list[float]] = {size: [] for size in specs}
                try:
                    for size in specs:
                        await procs[size].cmd(cmd="connect", url=nodes[size].url, n=1,
                                              room="r", durable=True, where=False)
                        await one_restore(nodes[size], procs[size], args.missed)  # warm-up
                    for _ in range(args.repeats):
                        for size in specs:
                            times[size].append(
                                await one_restore(nodes[size], procs[size], args.missed))
                finally:
                    await asyncio.gather(*(n.stop() for n in nodes.values()),
                                         *(p.stop() for p in procs.values()),
                                         return_exceptions=True)
                label = specs[args.small].label
                small, big = median(times[args.small]), median(times[args.big])
                for size in specs:
                    t = times[size]
                    rows.append([label, size, fills[size], median(t) * 1000,
                                 pct(t, 90) * 1000, min(t) * 1000,
                                 f"{median(t) / small:.2f}x"])
                verdict = "met" if big / small <= 1.2 else "MISSED"
                notes.append(f"{label}: {args.big:,} / {args.small:,} = {big / small:.2f}x "
                             f"(target <= 1.2x: {verdict})")
            finally:
                for spec in specs.values():
                    await drop_store(spec)

    print(f"restore: 1 client reconnects and receives {args.missed} missed events; "
          f"{args.repeats} repeats, small and big alternating")
    print(table(["store", "packets stored", "fill s", "median ms", "p90 ms", "min ms",
                 f"vs {args.small:,}"], rows))
    for note in notes:
        print(note)


if __name__ == "__main__":
    asyncio.run(main())
