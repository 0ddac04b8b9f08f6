"""``durable-adapter cleanup --vacuum``: a SQLite file gives back the space of a purge."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from durable_adapter import cleanup
from durable_adapter.exceptions import ConfigurationError
from durable_adapter.migrate import migrate
from durable_adapter.stores.sql import SQLStore

from .conftest import WAIT

PAYLOAD = b"x" * 1000


def _fill(path: Path, first: int, count: int, age: float) -> None:
    """``count`` packets from seq ``first``, ``age`` seconds old."""
    db = sqlite3.connect(path)
    try:
        db.executemany(
            "INSERT INTO durable_adapter_packets (seq, namespace, payload, rooms, "
            "except_rooms, created_at) VALUES (?, '/', ?, '[]', '[]', ?)",
            ((seq, PAYLOAD, time.time() - age) for seq in range(first, first + count)))
        db.execute("UPDATE durable_adapter_counter SET top = ?", (first + count - 1,))
        db.commit()
    finally:
        db.close()


def _size(path: Path) -> int:
    return path.stat().st_size


async def test_vacuum_returns_the_space_of_purged_packets(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    url = f"sqlite+aiosqlite:///{path}"
    await migrate(url)
    async with SQLStore(url):  # the counter row
        pass
    for first in (1, 5001):  # the first run converts the file, the second steps
        _fill(path, first, 5000, age=1000)
        full = _size(path)
        summary = await asyncio.wait_for(cleanup.run(
            url, once=True, retention=500, max_disconnection_duration=60, vacuum=True), WAIT)
        assert summary.packets == 5000
        assert _size(path) < full / 4, (full, _size(path))
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
    finally:
        db.close()


async def test_vacuum_is_refused_on_postgresql() -> None:
    with pytest.raises(ConfigurationError, match="SQLite only"):
        await cleanup.run("postgresql+asyncpg://nobody@127.0.0.1/none", once=True, vacuum=True)
