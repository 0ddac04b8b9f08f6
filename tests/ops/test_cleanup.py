"""The cleanup worker in process (:func:`durable_adapter.cleanup.run`), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, update

from durable_adapter import cleanup
from durable_adapter._cleanup_lock import NoLock
from durable_adapter.exceptions import ConfigurationError, StoreError
from durable_adapter.stores.base import NewPacket, PurgeResult, Session, TakeRequest
from durable_adapter.stores.memory import MemoryStore
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.schema import packets, sessions

from .conftest import WAIT, Target

MAX_DISCONNECTION = 60.0  # seconds, the servers' setting in these tests
RETENTION = 120.0  # seconds


def _session(pid_hash: str, *, expires_in: float, position: int = 0) -> Session:
    now = time.time()
    return Session(pid_hash=pid_hash, namespace="/", sid=f"sid-{pid_hash}", rooms=(),
                   data={}, epoch="e", start_seq=0, position=position, last_sent_seq=None,
                   disconnected_at=now, expires_at=now + expires_in)


async def _count(store: SQLStore, table: Any) -> int:
    async with store.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(table))).scalar())


async def _backdate(store: SQLStore, through_seq: int, age: float) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(update(packets).where(packets.c.seq <= through_seq)
                                 .values(created_at=time.time() - age))


async def _once(target: Target, **options: Any) -> cleanup.CleanupSummary:
    settings: dict[str, Any] = {"retention": RETENTION,
                                "max_disconnection_duration": MAX_DISCONNECTION,
                                "batch_size": 3, **options}
    return await asyncio.wait_for(
        cleanup.run(target.url, schema=target.schema, once=True, **settings), WAIT)


async def test_expired_sessions_are_removed_and_live_ones_kept(target: Target) -> None:
    async with target.store() as store:
        await store.save_sessions([_session(f"old{i}", expires_in=-1) for i in range(7)]
                                  + [_session("recoverable", expires_in=30)])
        summary = await _once(target)
        assert summary.sessions == 7
        assert await _count(store, sessions) == 1
        (taken,) = await store.take_sessions([TakeRequest("/", "recoverable")], node="n",
                                             now=time.time(), window=MAX_DISCONNECTION)
        assert isinstance(taken, Session) and taken.sid == "sid-recoverable"


async def test_needed_packets_kept_unneeded_removed(target: Target) -> None:
    async with target.store() as store:
        seqs = [await store.append(NewPacket(namespace="/", data=["e", i])) for i in range(10)]
        # the first 6 are older than the retention: no recoverable session can need them
        await _backdate(store, seqs[5], RETENTION + 10)
        # a session disconnected just now needs everything after its position
        await store.save_sessions([_session("p", expires_in=MAX_DISCONNECTION,
                                            position=seqs[5])])
        summary = await _once(target)
        assert (summary.packets, summary.sessions) == (6, 0)
        assert summary.purged_through == seqs[5]
        bounds = await store.bounds()
        assert bounds.purged_through == seqs[5]
        kept = await store.read(after=0, limit=100)
        assert [p.seq for p in kept] == seqs[6:]
        # a second pass finds nothing more to do
        assert (await _once(target)).packets == 0


async def test_retention_shorter_than_disconnection_is_refused(target: Target) -> None:
    with pytest.raises(ConfigurationError, match="shorter than max_disconnection_duration"):
        await cleanup.run(target.url, schema=target.schema, once=True, retention=10,
                          max_disconnection_duration=60)


async def test_default_retention_adds_a_margin() -> None:
    settings = cleanup.CleanupSettings(max_disconnection_duration=100)
    assert settings.effective_retention == 100 + cleanup.RETENTION_MARGIN


async def test_second_worker_is_standby_and_takes_over(
        target: Target, actions: ActionLog) -> None:
    common: dict[str, Any] = {"schema": target.schema, "interval": 0.05,
                              "retention": RETENTION,
                              "max_disconnection_duration": MAX_DISCONNECTION,
                              "standby_poll": 0.05}
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(cleanup.run(target.url, stop_event=stop_first, **common))
    await actions.wait("active", 1)
    second = asyncio.create_task(cleanup.run(target.url, stop_event=stop_second, **common))
    await actions.wait("standby", 1)
    # while the first is active, a --once worker does nothing and returns
    idle = await asyncio.wait_for(cleanup.run(target.url, once=True, **common), WAIT)
    assert idle.passes == 0
    stop_first.set()
    assert (await asyncio.wait_for(first, WAIT)).passes >= 1
    purged = len(actions.of("purged"))
    await actions.wait("active", 2)  # the standby took over
    await actions.wait("purged", purged + 1)
    stop_second.set()
    assert (await asyncio.wait_for(second, WAIT)).passes >= 1


class ActionLog(logging.Handler):
    """Records the worker's log records; waits for a count of one ``action``."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()

    def of(self, action: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "action", None) == action]

    async def wait(self, action: str, count: int) -> None:
        async def wait() -> None:
            while len(self.of(action)) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), WAIT)


@pytest.fixture
def actions() -> Iterator[ActionLog]:
    handler = ActionLog()
    worker_logger = logging.getLogger("durable_adapter.cleanup")
    level = worker_logger.level
    worker_logger.setLevel(logging.INFO)
    worker_logger.addHandler(handler)
    try:
        yield handler
    finally:
        worker_logger.removeHandler(handler)
        worker_logger.setLevel(level)


class _FlakyStore(MemoryStore):
    """Fails ``failures`` purges, then works; ``block`` makes a purge wait."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.block = asyncio.Event()
        self.block.set()
        self.purges = 0
        self.started = asyncio.Event()

    async def purge(self, *, now: float, retention: float, batch_size: int = 1000
                    ) -> PurgeResult:
        self.purges += 1
        self.started.set()
        await self.block.wait()
        if self.failures:
            self.failures -= 1
            raise StoreError("database went away")
        return await super().purge(now=now, retention=retention, batch_size=batch_size)


async def test_failures_after_start_are_retried_with_backoff(
        monkeypatch: pytest.MonkeyPatch, actions: ActionLog) -> None:
    store = _FlakyStore(failures=3)
    monkeypatch.setattr(cleanup, "open_target", lambda url, schema=None: (store, NoLock()))
    monkeypatch.setattr(cleanup, "BACKOFF_FIRST", 0.01)
    monkeypatch.setattr(cleanup, "BACKOFF_MAX", 0.03)
    stop = asyncio.Event()
    task = asyncio.create_task(cleanup.run("memory-like://", interval=0.01, stop_event=stop))
    await actions.wait("purged", 1)
    stop.set()
    summary = await asyncio.wait_for(task, WAIT)
    assert summary.passes >= 1
    retries = actions.of("retry")
    assert len(retries) == 3
    for delay, ceiling in zip([r.delay for r in retries], [0.01, 0.02, 0.03], strict=True):
        assert 0 <= delay <= ceiling  # jittered under a ceiling doubling up to the max
    assert all("database went away" in r.getMessage() for r in retries)


async def test_once_raises_instead_of_retrying(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _FlakyStore(failures=1)
    monkeypatch.setattr(cleanup, "open_target", lambda url, schema=None: (store, NoLock()))
    with pytest.raises(StoreError, match="went away"):
        await asyncio.wait_for(cleanup.run("x://", once=True), WAIT)


async def test_stop_interrupts_a_pass_in_flight(
        monkeypatch: pytest.MonkeyPatch, actions: ActionLog) -> None:
    store = _FlakyStore(failures=0)
    store.block.clear()  # the purge hangs as a slow batch would
    monkeypatch.setattr(cleanup, "open_target", lambda url, schema=None: (store, NoLock()))
    stop = asyncio.Event()
    task = asyncio.create_task(cleanup.run("x://", stop_event=stop))
    await asyncio.wait_for(store.started.wait(), WAIT)
    stop.set()
    summary = await asyncio.wait_for(task, WAIT)
    assert summary.passes == 0
    assert actions.of("interrupted")


@pytest.mark.parametrize("url, message", [
    ("not a url", "must be a store URL"),
    ("memory://", "memory:// lives inside one server process"),
    ("ftp://host/x", "unknown store scheme"),
])
async def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        await cleanup.run(url, once=True)


async def test_unreachable_postgres_at_start_raises() -> None:
    with pytest.raises(StoreError, match="cannot reach the store"):
        await asyncio.wait_for(
            cleanup.run("postgresql+asyncpg://nobody@127.0.0.1:1/none", once=True), WAIT)
