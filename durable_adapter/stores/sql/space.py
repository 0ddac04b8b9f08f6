"""Returning a SQLite file's free pages to the file system after a purge.

Deleted rows leave free pages inside the file, reused by later writes but never given
back. ``auto_vacuum = INCREMENTAL`` lets ``PRAGMA incremental_vacuum(n)`` release them
n at a time, but the mode only takes effect on a file created with it or after a
``VACUUM``; so the first call converts the file once, later ones release in steps.
"""

from __future__ import annotations

import asyncio
from typing import Any

INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


async def _pragma(db: Any, statement: str) -> list[Any]:
    async with db.execute(statement) as cursor:
        rows: list[Any] = list(await cursor.fetchall())
        return rows


async def file_bytes(db: Any) -> int:
    (pages,), = await _pragma(db, "PRAGMA page_count")
    (size,), = await _pragma(db, "PRAGMA page_size")
    return int(pages) * int(size)


async def vacuum(db: Any, step: int, pause: float) -> None:
    """On the aiosqlite connection ``db`` (autocommit): convert once, or release the
    free pages ``step`` at a time, leaving the write lock free ``pause`` s between."""
    (mode,), = await _pragma(db, "PRAGMA auto_vacuum")
    if int(mode) != INCREMENTAL:
        await _pragma(db, "PRAGMA auto_vacuum = INCREMENTAL")
        await _pragma(db, "VACUUM")  # rewrites the file: the mode takes effect
    left = None
    while True:
        (free,), = await _pragma(db, "PRAGMA freelist_count")
        if not free or free == left:  # done, or nothing more can go
            break
        left = free
        # run to completion: a plain execute steps it once, releasing a single page
        await db.executescript(f"PRAGMA incremental_vacuum({int(step)})")
        await asyncio.sleep(pause)
    # the write-ahead log grew with the rewrite: back to empty once no reader needs it
    await _pragma(db, "PRAGMA wal_checkpoint(TRUNCATE)")
