"""The store contract, run against every store in ``conftest.STORE_FACTORIES``.

At the end, tests only the SQL store can pass: several instances on one SQLite file
(as several processes would use it), durability across close/reopen, error translation.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import closing
from pathlib import Path
from typing import TypeVar

import pytest

from durable_adapter.exceptions import ConfigurationError, SessionDataError, StoreError
from durable_adapter.stores.base import NewPacket, Session, Store, StoredPacket
from durable_adapter.stores.membership import MembershipLog
from durable_adapter.stores.sql import SQLStore

from .conftest import WAIT, sqlite_url

PID = "a" * 64
T = TypeVar("T")


class Collector:
    """A packet listener recording every packet; waits are bounded by WAIT."""

    def __init__(self) -> None:
        self.packets: list[StoredPacket] = []
        self._changed = asyncio.Event()

    async def __call__(self, packets: Sequence[StoredPacket]) -> None:
        self.packets.extend(packets)
        self._changed.set()

    @property
    def seqs(self) -> list[int]:
        return [packet.seq for packet in self.packets]

    async def wait_for(self, count: int) -> None:
        async def until() -> None:
            while len(self.packets) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), WAIT)


def packet(data: object = "x", *, namespace: str = "/", **rooms: tuple[str, ...]) -> NewPacket:
    return NewPacket(namespace=namespace, data=["event", data], **rooms)


def session(
    pid_hash: str = PID, *, sid: str = "sid1", namespace: str = "/", expires_in: float = 60.0
) -> Session:
    now = time.time()
    return Session(
        pid_hash=pid_hash,
        namespace=namespace,
        sid=sid,
        rooms=(sid, "room1"),
        data={"user": "ada", "avatar": b"\x89PNG"},
        epoch="e",
        start_seq=0,
        position=3,
        last_sent_seq=None,
        disconnected_at=now,
        expires_at=now + expires_in,
    )


async def bounded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, WAIT)


# -- packets ----------------------------------------------------------------------


async def test_concurrent_appends_get_dense_increasing_seqs(store: Store) -> None:
    seqs = await bounded(asyncio.gather(*(store.append(packet(i)) for i in range(200))))
    assert sorted(seqs) == list(range(1, 201))
    stored = await bounded(store.read(after=0, limit=1000))
    assert [p.seq for p in stored] == list(range(1, 201))
    # each caller got the seq its own packet was stored under
    assert all(stored[seq - 1].data == ["event", i] for i, seq in enumerate(seqs))
    bounds = await bounded(store.bounds())
    assert (bounds.top, bounds.purged_through, bounds.epoch) == (200, 0, store.epoch)


async def test_read_after_until_namespace_limit(store: Store) -> None:
    for i in range(10):
        await bounded(store.append(packet(i, namespace="/chat" if i % 2 else "/")))
    assert [p.seq for p in await store.read(after=3, limit=100)] == list(range(4, 11))
    assert [p.seq for p in await store.read(after=3, limit=2)] == [4, 5]
    assert [p.seq for p in await store.read(after=3, limit=100, until=6)] == [4, 5, 6]
    chat = await store.read(after=0, limit=100, namespace="/chat")
    assert [p.seq for p in chat] == [2, 4, 6, 8, 10]
    assert {p.namespace for p in chat} == {"/chat"}
    assert [p.seq for p in await store.read(after=2, limit=2, namespace="/chat")] == [4, 6]
    assert await store.read(after=10, limit=100) == []


async def test_binary_payloads_and_rooms_round_trip(store: Store) -> None:
    data = ["upload", b"\x00\xff\x10", {"parts": [b"", b"abc", 1, "s", None, 1.5, True]}]
    sent = NewPacket(namespace="/files", data=data, rooms=("r1", "r2"), except_rooms=("sid9",))
    seq = await bounded(store.append(sent))
    (stored,) = await bounded(store.read(after=seq - 1, limit=10))
    assert stored.data == data
    assert (stored.namespace, stored.rooms) == ("/files", ("r1", "r2"))
    assert stored.except_rooms == ("sid9",)
    assert stored.seq == seq
    assert abs(stored.created_at - time.time()) < 60


# -- sessions ---------------------------------------------------------------------


async def test_claim_returns_the_saved_session_once(store: Store) -> None:
    await bounded(store.save_session(session()))
    newer = session()
    newer = Session(**{**newer.__dict__, "position": 7, "last_sent_seq": 6})
    await bounded(store.save_session(newer))  # replaces the first
    claimed = await bounded(store.claim_session("/", PID, time.time()))
    assert claimed == newer
    assert await bounded(store.claim_session("/", PID, time.time())) is None


async def test_session_keeps_its_room_stays(store: Store) -> None:
    log = MembershipLog(since=2, rooms={"room1": [(3, 5), (8, None)], "a.b$": [(4, 9)]})
    await bounded(store.save_session(Session(**{**session().__dict__, "membership": log})))
    claimed = await bounded(store.claim_session("/", PID, time.time()))
    assert claimed is not None and claimed.membership == log
    await bounded(store.save_session(session(pid_hash="b" * 64)))  # no log: as before it
    claimed = await bounded(store.claim_session("/", "b" * 64, time.time()))
    assert claimed is not None and claimed.membership is None


async def test_session_keeps_where_an_offsetless_recovery_resumes(store: Store) -> None:
    await bounded(store.save_session(Session(**{**session().__dict__, "resume_seq": 41})))
    claimed = await bounded(store.claim_session("/", PID, time.time()))
    assert claimed is not None and claimed.resume_seq == 41


async def test_claim_is_bound_to_its_namespace(store: Store) -> None:
    await bounded(store.save_session(session(namespace="/chat")))
    assert await bounded(store.claim_session("/", PID, time.time())) is None
    assert await bounded(store.claim_session("/chat", PID, time.time())) is not None


async def test_two_concurrent_claims_exactly_one_wins(store: Store) -> None:
    pids = [f"{i:064x}" for i in range(20)]
    for pid in pids:
        await bounded(store.save_session(session(pid)))
    now = time.time()
    for pid in pids:
        results = await bounded(
            asyncio.gather(store.claim_session("/", pid, now), store.claim_session("/", pid, now))
        )
        assert sum(result is not None for result in results) == 1


async def test_expired_session_is_not_returned(store: Store) -> None:
    await bounded(store.save_session(session(expires_in=-1)))
    assert await bounded(store.claim_session("/", PID, time.time())) is None


async def test_session_data_must_be_storable(store: Store) -> None:
    bad = Session(**{**session().__dict__, "data": {"socket": object()}})
    with pytest.raises(SessionDataError):
        await bounded(store.save_session(bad))


async def test_delete_sessions_forgets_every_session_of_a_sid(store: Store) -> None:
    await bounded(store.save_session(session("1" * 64, sid="gone")))
    await bounded(store.save_session(session("2" * 64, sid="gone")))
    await bounded(store.save_session(session("3" * 64, sid="stays")))
    await bounded(store.save_session(session("4" * 64, sid="gone", namespace="/other")))
    await bounded(store.delete_sessions("/", "gone"))
    now = time.time()
    assert await store.claim_session("/", "1" * 64, now) is None
    assert await store.claim_session("/", "2" * 64, now) is None
    assert await store.claim_session("/", "3" * 64, now) is not None
    assert await store.claim_session("/other", "4" * 64, now) is not None


# -- retention --------------------------------------------------------------------


async def test_purge_removes_old_packets_and_expired_sessions(store: Store) -> None:
    for i in range(5):
        await bounded(store.append(packet(i)))
    await asyncio.sleep(0.02)
    cutoff = time.time()
    await asyncio.sleep(0.02)
    for i in range(5, 8):
        await bounded(store.append(packet(i)))
    await bounded(store.save_session(session("1" * 64, expires_in=-1)))
    await bounded(store.save_session(session("2" * 64, expires_in=-1)))
    await bounded(store.save_session(session("3" * 64, expires_in=60)))

    result = await bounded(store.purge(now=cutoff + 10, retention=10, batch_size=2))
    assert (result.packets, result.sessions, result.purged_through) == (5, 2, 5)
    bounds = await store.bounds()
    assert (bounds.top, bounds.purged_through) == (8, 5)
    assert [p.seq for p in await store.read(after=0, limit=100)] == [6, 7, 8]
    assert await store.claim_session("/", "3" * 64, time.time()) is not None

    again = await bounded(store.purge(now=cutoff + 10, retention=10))
    assert (again.packets, again.sessions, again.purged_through) == (0, 0, 5)


# -- following --------------------------------------------------------------------


async def test_follow_delivers_every_packet_once_in_order(store: Store) -> None:
    for i in range(5):
        await bounded(store.append(packet(i)))
    collector = Collector()
    await bounded(store.follow(collector, after=0))
    await bounded(asyncio.gather(*(store.append(packet(i)) for i in range(5, 105))))
    for i in range(105, 110):
        await bounded(store.append(packet(i)))
    await collector.wait_for(110)
    # one packet more: packets come in order, so a duplicate of any earlier one is
    # there before it
    await bounded(store.append(packet(110)))
    await collector.wait_for(111)
    assert collector.seqs == list(range(1, 112))


async def test_follow_starts_after_the_cursor(store: Store) -> None:
    for i in range(5):
        await bounded(store.append(packet(i)))
    collector = Collector()
    await bounded(store.follow(collector, after=3))
    await bounded(store.append(packet(5)))
    await collector.wait_for(3)
    assert collector.seqs == [4, 5, 6]


# -- the SQL store on SQLite: several instances, durability, errors ----------------


@pytest.fixture
async def sqlite_pair(tmp_path: Path) -> AsyncIterator[tuple[SQLStore, SQLStore]]:
    first = SQLStore(sqlite_url(tmp_path), poll_interval=0.02)
    second = SQLStore(sqlite_url(tmp_path), poll_interval=0.02)
    await bounded(first.open())
    await bounded(second.open())
    try:
        yield first, second
    finally:
        await bounded(first.close())
        await bounded(second.close())


async def test_sqlite_another_instance_follows_appends(
    sqlite_pair: tuple[SQLStore, SQLStore],
) -> None:
    first, second = sqlite_pair
    assert first.epoch == second.epoch
    collector = Collector()
    await bounded(second.follow(collector, after=0))
    await bounded(second.following.wait())
    # both "processes" append at once: offsets are assigned under the write lock
    await bounded(
        asyncio.gather(
            *(first.append(packet(i)) for i in range(60)),
            *(second.append(packet(i)) for i in range(60)),
        )
    )
    await collector.wait_for(120)
    assert collector.seqs == list(range(1, 121))
    only_first = Collector()
    await bounded(second.follow(only_first, after=120))  # replaces the first follower
    await bounded(first.append(packet("from first")))
    await only_first.wait_for(1)
    assert only_first.packets[0].data == ["event", "from first"]


async def test_sqlite_survives_close_and_reopen(tmp_path: Path) -> None:
    store = SQLStore(sqlite_url(tmp_path))
    await bounded(store.open())
    epoch = store.epoch
    for i in range(3):
        await bounded(store.append(packet(i)))
    saved = session()
    await bounded(store.save_session(saved))
    await bounded(store.close())

    reopened = SQLStore(sqlite_url(tmp_path))
    await bounded(reopened.open())
    try:
        assert reopened.epoch == epoch
        assert (await reopened.bounds()).top == 3
        assert [p.data for p in await reopened.read(after=0, limit=10)] == [
            ["event", i] for i in range(3)
        ]
        assert await reopened.claim_session("/", PID, time.time()) == saved
        assert await bounded(reopened.append(packet(3))) == 4
    finally:
        await bounded(reopened.close())


async def test_sqlite_new_file_gets_a_new_epoch(tmp_path: Path) -> None:
    epochs = []
    for name in ("a.db", "b.db"):
        async with SQLStore(sqlite_url(tmp_path, name)) as store:
            epochs.append(store.epoch)
    assert epochs[0] != epochs[1]
    assert all(len(epoch) >= 16 for epoch in epochs)


async def test_sqlite_without_tables_and_auto_migrate_off_asks_for_migrate(tmp_path: Path) -> None:
    store = SQLStore(sqlite_url(tmp_path), auto_migrate=False)
    with pytest.raises(ConfigurationError, match="durable-adapter migrate --store"):
        await bounded(store.open())


async def test_sqlite_unreachable_file_raises_store_error(tmp_path: Path) -> None:
    store = SQLStore(sqlite_url(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(StoreError, match="cannot reach"):
        await bounded(store.open())
    # aiosqlite stops the thread of a failed connection without waiting for it; let it
    # finish while this loop still runs, or it reports into a closed loop
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            await bounded(asyncio.to_thread(thread.join, WAIT))


async def test_sqlite_failed_batch_raises_in_every_caller(tmp_path: Path) -> None:
    async with SQLStore(sqlite_url(tmp_path)) as store:
        with closing(sqlite3.connect(tmp_path / "store.db")) as other:
            other.execute("ALTER TABLE durable_adapter_packets RENAME TO hidden")
            other.commit()
        results = await bounded(
            asyncio.gather(*(store.append(packet(i)) for i in range(10)), return_exceptions=True)
        )
        assert all(isinstance(result, StoreError) for result in results)
        assert all(result.__cause__ is not None for result in results)
        with closing(sqlite3.connect(tmp_path / "store.db")) as other:
            other.execute("ALTER TABLE hidden RENAME TO durable_adapter_packets")
            other.commit()
        # the counter was rolled back with the inserts: offsets stay dense
        assert await bounded(store.append(packet("after"))) == 1


class _Signal(logging.Handler):
    """Sets an event when a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_sqlite_follower_survives_a_failed_read(tmp_path: Path) -> None:
    signal = _Signal("following the store failed")
    logger = logging.getLogger("durable_adapter")
    logger.addHandler(signal)
    try:
        async with SQLStore(sqlite_url(tmp_path), poll_interval=0.02) as store:
            collector = Collector()
            await bounded(store.follow(collector, after=0))
            await bounded(store.following.wait())
            with closing(sqlite3.connect(tmp_path / "store.db")) as other:
                other.execute("ALTER TABLE durable_adapter_packets RENAME TO hidden")
                other.commit()  # seen by the follower's change check: it reads, and fails
                await bounded(signal.seen.wait())
                other.execute("ALTER TABLE hidden RENAME TO durable_adapter_packets")
                other.commit()
            assert store.following.is_set()  # still running, backing off
            await bounded(store.append(packet("after the failure")))
            await collector.wait_for(1)
            assert collector.seqs == [1]
    finally:
        logger.removeHandler(signal)
