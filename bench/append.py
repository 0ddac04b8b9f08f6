"""Append rate: the store's batched append against a raw batched INSERT of the same rows.

In this process, on each SQL store (SQLite, PostgreSQL):

* store: ``--rows`` packets appended through ``store.append()`` by ``--concurrency``
  tasks at once (the store's writer batches them, up to ``batch_max`` = 500 per
  transaction, taking the counter row lock and, on PostgreSQL, ringing NOTIFY);
* raw: the same rows (same encoded payload, same seqs) inserted into the same table of
  a database made the same way, straight through the driver (aiosqlite / asyncpg
  ``executemany``), 500 rows per transaction, nothing else.

A third figure, raw+encode, times the raw INSERT plus encoding the rows with the store's
own ``packet_values`` (JSON of payload and rooms): the part of the gap that is Python
encoding per packet rather than the database.

A fourth, no-db, runs the store's own append path with the database call replaced by
nothing (the same ``append()``: check, encode, writer queue, one future per caller,
batch split into columns): the most any store can reach through ``append()`` in this
process, so ``no-db / raw`` is the ceiling of ``store / raw``.

Each trial uses a fresh database (SQLite file / PostgreSQL schema); the four alternate
(raw, raw+encode, store, no-db) for ``--repeats`` trials, medians shown. Target: store
>= 50% of raw.

    python bench/append.py
    python bench/append.py --stores postgres --rows 50000 --concurrency 2000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from _common import StoreSpec, _pg_dsn, drop_store, make_store, median, scratch_dir, table

from durable_adapter.stores.base import HistoryBounds, NewPacket
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.append import Batch
from durable_adapter.stores.sql.schema import PREFIX, packet_values

BATCH = 500  # rows per transaction, the store's default batch_max
COLUMNS = "(seq, namespace, payload, rooms, except_rooms, created_at)"


def new_packet(i: int, size: int) -> NewPacket:
    return NewPacket(namespace="/", data=["ev", {"i": i, "pad": "x" * size}], rooms=("room",))


class NoDatabase(SQLStore):
    """The SQL store with its one database call per batch replaced by a counter."""

    top = 0

    async def _write_batch(self, driver: Any, batch: Batch, now: float) -> int:
        self.top += batch.count
        return self.top

    async def bounds(self) -> HistoryBounds:
        return HistoryBounds(epoch="", top=self.top, purged_through=0)


async def store_rate(spec: StoreSpec, rows: int, concurrency: int, size: int,
                     database: bool = True) -> float:
    store = spec.open_store() if database else NoDatabase(spec.url)
    await store.open()
    packets = [new_packet(i, size) for i in range(rows)]
    try:
        queue = iter(packets)

        async def appender() -> None:
            for packet in queue:
                await store.append(packet)

        t0 = time.monotonic()
        await asyncio.gather(*(appender() for _ in range(concurrency)))
        elapsed = time.monotonic() - t0
        top = (await store.bounds()).top
        if top != rows:
            raise RuntimeError(f"store top {top}, expected {rows}")
    finally:
        await store.close()
    return rows / elapsed


def raw_rows(rows: int, size: int) -> list[tuple[Any, ...]]:
    now = time.time()
    out = []
    for i in range(rows):
        v = packet_values(new_packet(i, size))
        out.append((i + 1, v["namespace"], v["payload"], v["rooms"], v["except_rooms"], now))
    return out


async def raw_rate(spec: StoreSpec, rows: int, size: int, encode: bool = False) -> float:
    """Rows per second of the raw INSERT; ``encode``: the rows' encoding (the store's own
    ``packet_values``) is timed too, to show how much of the gap is Python encoding."""
    t_encode = time.monotonic()
    data = raw_rows(rows, size)
    encoding = time.monotonic() - t_encode if encode else 0.0
    if spec.url.startswith("sqlite"):
        import aiosqlite

        path = Path(spec.url.split("///", 1)[1])
        async with aiosqlite.connect(path, isolation_level=None) as db:
            # the store's settings (durable_adapter/stores/sql/dialect.py)
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            sql = f"INSERT INTO {PREFIX}packets {COLUMNS} VALUES (?, ?, ?, ?, ?, ?)"
            t0 = time.monotonic()
            for start in range(0, rows, BATCH):
                await db.execute("BEGIN IMMEDIATE")
                await db.executemany(sql, data[start:start + BATCH])
                await db.execute("COMMIT")
            return rows / (time.monotonic() - t0 + encoding)
    import asyncpg

    db = await asyncpg.connect(_pg_dsn())
    try:
        sql = (f'INSERT INTO "{spec.schema}".{PREFIX}packets {COLUMNS} '
               "VALUES ($1, $2, $3, $4, $5, $6)")
        t0 = time.monotonic()
        for start in range(0, rows, BATCH):
            async with db.transaction():
                await db.executemany(sql, data[start:start + BATCH])
        return rows / (time.monotonic() - t0 + encoding)
    finally:
        await db.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=1000,
                        help="tasks appending at once (default 1000)")
    parser.add_argument("--size", type=int, default=100, help="payload padding, bytes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stores", default="sqlite,postgres")
    args = parser.parse_args()

    table_rows: list[list[Any]] = []
    notes: list[str] = []
    with scratch_dir() as tmp:
        for kind in args.stores.split(","):
            figures: dict[str, list[float]] = {which: [] for which in WHICH}
            label = kind
            for trial in range(args.repeats):
                for which in WHICH:
                    # no-db needs tables to open, never writes to them: any SQLite file
                    spec = await make_store("sqlite" if which == "no-db" else kind.strip(),
                                            tmp, f"append{trial}{which}")
                    if isinstance(spec, str):
                        break
                    if which != "no-db":
                        label = spec.label
                    try:
                        figures[which].append(await measure(which, spec, args))
                    finally:
                        await drop_store(spec)
                if isinstance(spec, str):
                    notes.append(f"{kind}: skipped, {spec}")
                    break
            if not figures["raw"] or not figures["store"]:
                continue
            raw, raw_encoded, ours, ceiling = (median(figures[which]) for which in WHICH)
            share = ours / raw
            table_rows.append([label, raw, raw_encoded, ours, ceiling, f"{share:.0%}",
                               f"{ours / raw_encoded:.0%}", f"{ceiling / raw:.0%}",
                               " ".join(f"{x / 1000:.1f}" for x in figures["raw"]),
                               " ".join(f"{x / 1000:.1f}" for x in figures["store"])])
            notes.append(f"{label}: store append = {share:.0%} of raw batched INSERT "
                         f"(target >= 50%: {'met' if share >= 0.5 else 'MISSED'}); "
                         f"without the database the same append() path reaches "
                         f"{ceiling / raw:.0%} of raw")

    print(f"append: {args.rows:,} rows of ~{args.size + 40} B payload, {BATCH} per transaction; "
          f"store with {args.concurrency} concurrent appenders; {args.repeats} trials, "
          "medians")
    print(table(["store", "raw INSERT rows/s", "raw+encode rows/s", "store append rows/s",
                 "no-db append rows/s", "store / raw", "store / raw+encode", "no-db / raw",
                 "raw trials (k/s)", "store trials (k/s)"], table_rows))
    for note in notes:
        print(note)


WHICH = ("raw", "raw+encode", "store", "no-db")


async def measure(which: str, spec: StoreSpec, args: argparse.Namespace) -> float:
    if which == "raw":
        return await raw_rate(spec, args.rows, args.size)
    if which == "raw+encode":
        return await raw_rate(spec, args.rows, args.size, encode=True)
    return await store_rate(spec, args.rows, args.concurrency, args.size,
                            database=which == "store")


if __name__ == "__main__":
    asyncio.run(main())
