"""Cleanup at size: one purge pass over a large backlog of expired packets.

PostgreSQL: a pass over 2.5x10^5 and one over 10^6 expired packets, each in a fresh
schema filled in one ``generate_series`` INSERT with as many packets in all (the N
oldest expired, the rest recent), so that a small backlog is not measured on a table
that fits in shared_buffers against a large one that does not; timed inside this
process (start-up excluded). Printed: the pass time, the median batch time of its
first and last tenth, the ratio of the two pass times (linear is 4x), and
``EXPLAIN (ANALYZE, BUFFERS)`` of a batch's head query at the first and the last
batch, bounded by the purge mark as the store runs it and unbounded (as it ran
before), to show the dead index entries an unbounded scan walks.

SQLite: a file with 10^6 expired packets, and a second process with a server
(``durable_adapter.AsyncServer`` on the same file) that emits one event after another;
printed: its emits' max, p99 and median wait without a pass, during a pass without
pauses between batches (as before), and during a pass as the store runs it.

Usage::

    .venv/bin/python bench/cleanup.py                      # both, at 2.5x10^5 and 10^6
    .venv/bin/python bench/cleanup.py --only postgres --sizes 100000 400000
    .venv/bin/python bench/cleanup.py --only sqlite --sqlite-size 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    PG_URL,
    _pg_dsn,
    median,
    pct,
    postgres_reachable,
    ratio,
    scratch_dir,
    table,
)

from durable_adapter._codec import encode_value
from durable_adapter.migrate import migrate
from durable_adapter.stores.sql import SQLStore

BATCH = 1000  # rows per purge transaction, the worker's default
AGE = 100_000.0  # seconds: how old the filled packets are (all expired)
RETENTION = 420.0  # seconds, the worker's default retention
PAYLOAD = encode_value(["message", "x" * 100])  # a 100-byte chat message
EMIT_GAP = 0.005  # seconds between two emits of the emitting server
BASELINE_SECONDS = 5.0  # seconds of emits measured without a pass
RECENT = 100_000  # packets newer than the retention in every PostgreSQL table

PACKETS = "durable_adapter_packets"
COUNTER = "durable_adapter_counter"


@dataclass
class Pass:
    """One timed pass: total seconds and each packet batch's seconds."""

    size: int
    seconds: float = 0.0
    batches: list[float] = field(default_factory=list)
    explains: list[tuple[str, str]] = field(default_factory=list)
    explain_seconds: float = 0.0  # spent in EXPLAIN during the pass: not counted

    def decile(self, last: bool) -> float:
        tenth = max(1, len(self.batches) // 10)
        return median(self.batches[-tenth:] if last else self.batches[:tenth])


def timed_batches(store: SQLStore, record: Pass,
                  at_batch: Callable[[int], Awaitable[None]] | None = None) -> None:
    """Wrap the store's packet batch so each one's time lands in ``record``."""
    batch = store._purge_packets

    async def timed(cutoff: float, batch_size: int) -> int:
        if at_batch is not None:
            await at_batch(len(record.batches))
        started = time.perf_counter()
        removed = await batch(cutoff, batch_size)
        if removed:
            record.batches.append(time.perf_counter() - started)
        return removed

    store._purge_packets = timed  # type: ignore[method-assign]


# -- PostgreSQL ------------------------------------------------------------------------


async def pg(sql: str, *args: Any) -> Any:
    import asyncpg

    connection = await asyncpg.connect(_pg_dsn())
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


async def fill_postgres(schema: str, expired: int, total: int) -> None:
    """``total`` packets, the first ``expired`` of them old enough to be purged."""
    now = time.time()
    await pg(f'INSERT INTO "{schema}".{PACKETS} (seq, namespace, payload, rooms, '
             "except_rooms, created_at) SELECT g, '/', $1::bytea, '[]', '[]', "
             "CASE WHEN g <= $2::bigint THEN $3::float8 ELSE $4::float8 END "
             "FROM generate_series(1, $5::bigint) AS g", PAYLOAD, expired, now - AGE, now,
             total)
    await pg(f'INSERT INTO "{schema}".{COUNTER} (id, top, purged_through) VALUES (1, $1, 0) '
             "ON CONFLICT (id) DO UPDATE SET top = excluded.top", total)
    await pg(f'VACUUM ANALYZE "{schema}".{PACKETS}')


def head_query(schema: str, bounded: bool) -> str:
    """The batch's head query as the store sends it (bounded) or without the bound."""
    bound = (f"WHERE seq > (SELECT purged_through FROM \"{schema}\".{COUNTER} WHERE id = 1) "
             if bounded else "")
    return (f"SELECT max(seq) FROM (SELECT seq, created_at FROM \"{schema}\".{PACKETS} "
            f"{bound}ORDER BY seq LIMIT {BATCH}) AS head WHERE created_at < {time.time()}")


async def explain(schema: str, bounded: bool) -> str:
    rows = await pg(f"EXPLAIN (ANALYZE, BUFFERS) {head_query(schema, bounded)}")
    lines = [row[0] for row in rows]
    buffers = next((line.strip() for line in lines if "Buffers" in line), "?")
    total = next((line.strip() for line in lines if "Execution Time" in line), "?")
    return f"{buffers}; {total}"


async def postgres_pass(size: int, total: int) -> Pass:
    from durable_adapter.stores.sql.postgres import PostgresStore

    schema = f"bench_cleanup_{secrets.token_hex(3)}"
    await migrate(PG_URL, schema=schema)
    record = Pass(size)
    try:
        await fill_postgres(schema, size, total)
        store = PostgresStore(PG_URL, schema=schema)
        await store.open()
        last = size // BATCH - 1

        async def at_batch(index: int) -> None:
            if index in (0, last):  # before the first and the last batch
                started = time.perf_counter()
                for bounded in (True, False):
                    where = "first" if index == 0 else "last"
                    label = f"{where} batch, {'bounded' if bounded else 'unbounded'}"
                    record.explains.append((label, await explain(schema, bounded)))
                record.explain_seconds += time.perf_counter() - started

        timed_batches(store, record, at_batch)
        try:
            started = time.perf_counter()
            result = await store.purge(now=time.time(), retention=RETENTION, batch_size=BATCH)
            record.seconds = time.perf_counter() - started - record.explain_seconds
            assert result.packets == size, result
        finally:
            await store.close()
    finally:
        await pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return record


async def run_postgres(sizes: list[int], rounds: int) -> None:
    if not await postgres_reachable():
        print(f"PostgreSQL: skipped, not reachable at {PG_URL}")
        return
    runs: dict[int, list[Pass]] = {size: [] for size in sizes}
    for _ in range(rounds):  # sizes in alternation: the machine's load hits each alike
        for size in sizes:
            runs[size].append(await postgres_pass(size, max(sizes) + RECENT))
    # per size, the round whose pass time is the median
    passes = [sorted(runs[size], key=lambda p: p.seconds)[rounds // 2] for size in sizes]
    base = passes[0]
    print(f"\nPostgreSQL: one cleanup pass over N expired packets (batches of {BATCH}; "
          f"start-up and EXPLAIN excluded; median of {rounds} rounds); every table holds "
          f"{max(sizes) + RECENT:,} packets, the N oldest expired, so every pass starts on "
          "a cache in the same state (expired packets are the coldest)")
    print(table(["N", "pass s", "vs first row", "linear would be", "batch ms, first 10%",
                 "batch ms, last 10%", "last/first", "batch ms, p99", "max"],
                [[p.size, p.seconds, ratio(p.seconds, base.seconds),
                  f"{p.size / base.size:.2f}x", p.decile(False) * 1000,
                  p.decile(True) * 1000, ratio(p.decile(True), p.decile(False)),
                  pct(p.batches, 99) * 1000, max(p.batches) * 1000]
                 for p in passes]))
    print("all rounds, pass s: " + "; ".join(
        f"{size:,}: " + ", ".join(f"{p.seconds:.2f}" for p in runs[size]) for size in sizes))
    print(f"\nEXPLAIN (ANALYZE, BUFFERS) of a batch's head query, pass over {passes[-1].size:,}:")
    for label, text in passes[-1].explains:
        print(f"  {label:28} {text}")


# -- SQLite ----------------------------------------------------------------------------


def fill_sqlite(path: Path, size: int) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute(
            f"WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < ?) "
            f"INSERT INTO {PACKETS} (seq, namespace, payload, rooms, except_rooms, created_at) "
            "SELECT x, '/', ?, '[]', '[]', ? FROM g", (size, PAYLOAD, time.time() - AGE))
        connection.execute(f"INSERT INTO {COUNTER} (id, top, purged_through) VALUES (1, ?, 0) "
                           "ON CONFLICT (id) DO UPDATE SET top = excluded.top", (size,))
        connection.commit()
    finally:
        connection.close()


async def emitter(url: str) -> None:
    """The second process: a server on the same file emitting one event after another
    until its stdin closes; prints the waits (seconds) as one JSON line."""
    import durable_adapter

    sio = durable_adapter.AsyncServer(store=url, async_mode="asgi")
    await sio.emit("warm-up", 0)  # opens the store: not measured
    print(json.dumps({"ready": True}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def until_closed() -> None:
        await reader.read()
        stop.set()

    watcher = asyncio.create_task(until_closed())
    waits: list[float] = []
    n = 0
    while not stop.is_set():
        started = time.perf_counter()
        await sio.emit("tick", n)
        waits.append(time.perf_counter() - started)
        n += 1
        await asyncio.sleep(EMIT_GAP)
    await watcher
    await sio.shutdown()
    print(json.dumps({"waits": waits}), flush=True)


class Emitter:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, url: str) -> Emitter:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--emitter", url, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, limit=2**26)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if not json.loads(line).get("ready"):
            raise RuntimeError(f"emitter did not start: {line!r}")
        return cls(process)

    async def stop(self) -> list[float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        await self.process.wait()
        waits: list[float] = json.loads(line)["waits"]
        return waits


async def sqlite_pass(tmp: Path, size: int, pause: float) -> tuple[Pass, list[float], float]:
    """A pass over ``size`` packets with ``pause`` between batches while a server emits;
    the pass, the emits' waits and the file's size (MB) after the pass."""
    path = tmp / f"cleanup-{secrets.token_hex(3)}.db"
    url = f"sqlite+aiosqlite:///{path}"
    await migrate(url)
    fill_sqlite(path, size)
    emitting = await Emitter.start(url)
    store = SQLStore(url)
    store.purge_pause = pause
    await store.open()
    record = Pass(size)
    timed_batches(store, record)
    try:
        started = time.perf_counter()
        result = await store.purge(now=time.time(), retention=RETENTION, batch_size=BATCH)
        record.seconds = time.perf_counter() - started
    finally:
        during = await emitting.stop()
        await store.close()
    assert result.packets == size, result
    return record, during, path.stat().st_size / 2**20


async def run_sqlite(size: int, pauses: list[float]) -> None:
    rows = []
    with scratch_dir() as tmp:
        path = tmp / "idle.db"
        url = f"sqlite+aiosqlite:///{path}"
        await migrate(url)
        fill_sqlite(path, size)
        emitting = await Emitter.start(url)
        await asyncio.sleep(BASELINE_SECONDS)  # the baseline is a duration of emits
        rows.append(("no pass", "-", "-", await emitting.stop(), "-"))
        for pause in pauses:
            record, waits, size_mb = await sqlite_pass(tmp, size, pause)
            rows.append((f"during a pass, pause {pause * 1000:g} ms", record.seconds,
                         median(record.batches) * 1000, waits, size_mb))
    print(f"\nSQLite: a server emitting on the same file (one emit every {EMIT_GAP * 1000:g} "
          f"ms) while a pass removes {size:,} expired packets (batches of {BATCH})")
    print(table(["emits", "pass s", "batch ms", "n", "max wait ms", "p99 ms", "median ms",
                 "file MB after"],
                [[label, seconds, batch, len(waits), max(waits) * 1000, pct(waits, 99) * 1000,
                  median(waits) * 1000, size_mb]
                 for label, seconds, batch, waits, size_mb in rows]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("postgres", "sqlite"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000],
                        help="PostgreSQL backlogs, the first is the baseline")
    parser.add_argument("--rounds", type=int, default=3,
                        help="PostgreSQL passes per size, in alternation (median shown)")
    parser.add_argument("--sqlite-size", type=int, default=1_000_000)
    parser.add_argument("--pauses", type=float, nargs="+", default=[0.0, SQLStore.purge_pause],
                        help="seconds between SQLite batches, one pass each (0: as before)")
    parser.add_argument("--emitter", metavar="URL", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


async def main() -> None:
    args = parse_args()
    if args.emitter:
        await emitter(args.emitter)
        return
    if args.only in (None, "postgres"):
        await run_postgres(args.sizes, args.rounds)
    if args.only in (None, "sqlite"):
        await run_sqlite(args.sqlite_size, args.pauses)


if __name__ == "__main__":
    asyncio.run(main())
