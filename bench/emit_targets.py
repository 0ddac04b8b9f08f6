"""What the target index adds to a sequential ``await sio.emit`` on SQLite (issue 25).

In one process, rounds in turn (ABBA, neither variant always first): ``--emits``
sequential emits to a room nobody is in with the target rows written as the store
writes them, the same with the batch's target rows dropped (``append.split`` wrapped:
for this measurement only, such a store could not replay), and ``--emits`` raw
single-row commits through aiosqlite (WAL, synchronous NORMAL: the store's settings).
Prints each variant's ms per emit (every round and the median) and the ratios. Then the
WAL pages each emit commits, with and without the target rows, and for a raw commit.

    .venv/bin/python bench/emit_targets.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import aiosqlite

import durable_adapter
from durable_adapter.migrate import migrate
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql import append as appends
from durable_adapter.stores.sql.schema import PREFIX, SINGLETON_ID
from durable_adapter.stores.targets import targets_of

_split = appends.split
_COLUMNS = "(seq, namespace, payload, rooms, except_rooms, created_at)"


def _without_targets(rows: list[dict[str, Any]]) -> appends.Batch:
    batch = _split(rows)
    batch.target_numbers, batch.target_namespaces, batch.target_keys = [], [], []
    return batch


async def timed(directory: str, args: argparse.Namespace) -> dict[str, list[float]]:
    url = f"sqlite+aiosqlite:///{directory}/store.db"
    await migrate(url)
    sio = durable_adapter.AsyncServer(
        store=SQLStore(url), async_mode="asgi",
        connection_state_recovery={"max_disconnection_duration": 600})
    pad = "x" * args.size
    count: int = args.emits

    async def emits() -> float:
        t0 = time.perf_counter()
        for i in range(count):
            await sio.emit("ev", {"i": i, "pad": pad}, to="nobody")
        return (time.perf_counter() - t0) / count * 1000

    db = await aiosqlite.connect(f"{directory}/raw.db", isolation_level=None)
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = NORMAL")
    await db.execute(f"CREATE TABLE p {_COLUMNS}")
    seq = 0

    async def raws() -> float:
        nonlocal seq
        t0 = time.perf_counter()
        for _ in range(count):
            seq += 1
            await db.execute("INSERT INTO p VALUES (?, ?, ?, ?, ?, ?)",
                             (seq, "/", pad.encode(), '["nobody"]', "[]", time.time()))
        return (time.perf_counter() - t0) / count * 1000

    figures: dict[str, list[float]] = {"with target rows": [], "without": [], "raw commit": []}
    variants: list[tuple[str, Callable[..., appends.Batch]]] = [
        ("with target rows", _split), ("without", _without_targets)]
    try:
        await emits()  # warm-up: the writer, the connection, the statements
        await raws()
        for round_ in range(args.rounds):
            for name, split in variants if round_ % 2 == 0 else variants[::-1]:
                appends.split = split
                figures[name].append(await emits())
            figures["raw commit"].append(await raws())
    finally:
        appends.split = _split
        await db.close()
        await sio.shutdown()
    return figures


def wal_pages(directory: str, targets: bool | None, commits: int = 1000) -> float:
    """WAL pages written per commit: an emit's batch of one packet (``targets``: with its
    target rows or not), or a raw single-row INSERT (None)."""
    path = os.path.join(directory, f"wal-{targets}.db")
    asyncio.run(migrate(f"sqlite+aiosqlite:///{path}"))
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute(f"INSERT OR IGNORE INTO {PREFIX}counter (id, top, purged_through) "
                   f"VALUES ({SINGLETON_ID}, 0, 0)")
        db.execute(f"CREATE TABLE p {_COLUMNS}")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        from sqlalchemy.dialects.sqlite import dialect

        statements = appends.sqlite_statements(dialect())
        row = {"namespace": "/", "payload": b"x" * 150, "rooms": '["nobody"]',
               "except_rooms": "[]", "targets": targets_of(("nobody",))}
        for n in range(commits):
            if targets is None:
                db.execute("INSERT INTO p VALUES (?, ?, ?, ?, ?, ?)",
                           (n, "/", b"x" * 150, "[]", "[]", 0.0))
            else:
                batch = _split([row]) if targets else _without_targets([row])
                appends.sqlite_write(db, statements, batch, time.time())
        page: int = db.execute("PRAGMA page_size").fetchone()[0]
        size = os.path.getsize(path + "-wal")  # before the close checkpoints it away
    finally:
        db.close()
    return (size - 32) / (page + 24) / commits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emits", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--size", type=int, default=100, help="payload padding, bytes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="durable-bench-") as directory:
        figures = asyncio.run(timed(directory, args))
        medians = {name: statistics.median(values) for name, values in figures.items()}
        raw = medians["raw commit"]
        print(f"SQLite, sequential emits to a room nobody is in, {args.emits} per round, "
              f"{args.rounds} rounds (ABBA), ms each")
        for name, values in figures.items():
            print(f"  {name:17} median {medians[name]:.3f}  vs raw commit "
                  f"{medians[name] / raw:.2f}x  rounds: "
                  + " ".join(f"{v:.3f}" for v in values))
        print("WAL pages per commit: emit with target rows "
              f"{wal_pages(directory, True):.2f}, without {wal_pages(directory, False):.2f}, "
              f"raw single-row commit {wal_pages(directory, None):.2f}")


if __name__ == "__main__":
    main()
