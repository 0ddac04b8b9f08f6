"""The store contract, run against every store in ``conftest.STORE_FACTORIES``.

At the end, tests only the SQL store can pass: several instances on one SQLite file
(as several processes would use it), durability across close/reopen, error translation.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from durable_adapter.stores.base import (
    ControlMessage,
    NewPacket,
    OwnedBy,
    Session,
    Store,
    StoredPacket,
    TakeRequest,
)
from durable_adapter.stores.membership import MembershipLog
from durable_adapter.stores.memory import MemoryStore
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


# -- the contract in one place ------------------------------------------------------


def test_the_store_docstring_lists_every_member_of_the_contract() -> None:
    members = {name for name in dir(Store) if not name.startswith("_")} | {"shared"}
    listed = {name for name in members
              if f":meth:`{name}`" in (Store.__doc__ or "")
              or f":attr:`{name}`" in (Store.__doc__ or "")}
    assert listed == members
    # one form per operation: keep it small (20: the operations, plus ``codec``)
    assert len(members) <= 20


# -- capabilities -----------------------------------------------------------------


async def test_a_store_says_whether_other_processes_can_use_it(store: Store) -> None:
    assert type(store).shared is (not isinstance(store, MemoryStore))
    # with nobody following (or, not shared, nobody there at all): no error
    await bounded(store.publish_control(ControlMessage(method="m", origin="n")))


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


async def save(store: Store, *sessions: Session, node: str | None = None) -> None:
    await bounded(store.save_sessions(list(sessions), node=node))


async def take_back(store: Store, pid_hash: str = PID, namespace: str = "/", *,
                    node: str = "reader", now: float | None = None) -> Session | None:
    """The stored session as a node's take finds it, with its stored owner (None) put back
    for comparison; None when absent or expired."""
    (taken,) = await bounded(store.take_sessions(
        [TakeRequest(namespace, pid_hash)], node=node,
        now=time.time() if now is None else now, window=60.0))
    assert not isinstance(taken, OwnedBy), taken
    return None if taken is None else dataclasses.replace(taken, owner=None)


async def test_a_take_returns_the_last_saved_session_to_one_node(store: Store) -> None:
    await save(store, session())
    newer = dataclasses.replace(session(), position=7, last_sent_seq=6)
    await save(store, newer)  # replaces the first
    await store.renew_lease("a", now=time.time(), expiry=60)
    (taken,) = await bounded(store.take_sessions([TakeRequest("/", PID)], node="a",
                                                 now=time.time(), window=60))
    assert taken == dataclasses.replace(newer, owner="a")
    (again,) = await bounded(store.take_sessions([TakeRequest("/", PID)], node="b",
                                                 now=time.time(), window=60))
    assert again == OwnedBy("a")


async def test_session_keeps_its_room_stays(store: Store) -> None:
    log = MembershipLog(since=2, rooms={"room1": [(3, 5), (8, None)], "a.b$": [(4, 9)]})
    await save(store, dataclasses.replace(session(), membership=log))
    taken = await take_back(store)
    assert taken is not None and taken.membership == log
    await save(store, session(pid_hash="b" * 64))  # no log: as before it
    taken = await take_back(store, "b" * 64)
    assert taken is not None and taken.membership is None


async def test_session_keeps_where_an_offsetless_recovery_resumes(store: Store) -> None:
    await save(store, dataclasses.replace(session(), resume_seq=41))
    taken = await take_back(store)
    assert taken is not None and taken.resume_seq == 41


async def test_a_session_is_bound_to_its_namespace(store: Store) -> None:
    await save(store, session(namespace="/chat"))
    assert await take_back(store, PID, "/") is None
    assert await take_back(store, PID, "/chat") is not None


async def test_two_concurrent_takes_exactly_one_wins(store: Store) -> None:
    pids = [f"{i:064x}" for i in range(20)]
    await save(store, *(session(pid) for pid in pids))
    now = time.time()
    for node in ("a", "b"):
        await store.renew_lease(node, now=now, expiry=60)
    for pid in pids:
        results = await bounded(asyncio.gather(*(store.take_sessions(
            [TakeRequest("/", pid)], node=node, now=now, window=60) for node in ("a", "b"))))
        assert sum(isinstance(result, Session) for (result,) in results) == 1


async def test_expired_session_is_not_returned(store: Store) -> None:
    await save(store, session(expires_in=-1))
    assert await take_back(store) is None


async def test_session_data_must_be_storable(store: Store) -> None:
    bad = dataclasses.replace(session(), data={"socket": object()})
    with pytest.raises(SessionDataError):
        await save(store, bad)


async def test_delete_sessions_forgets_every_session_of_a_sid(store: Store) -> None:
    await save(store, session("1" * 64, sid="gone"), session("2" * 64, sid="gone"),
               session("3" * 64, sid="stays"), session("4" * 64, sid="gone", namespace="/other"))
    await bounded(store.delete_sessions([("/", "gone")]))
    assert await take_back(store, "1" * 64) is None
    assert await take_back(store, "2" * 64) is None
    assert await take_back(store, "3" * 64) is not None
    assert await take_back(store, "4" * 64, "/other") is not None
    await bounded(store.delete_sessions([]))  # nothing to do
    await bounded(store.delete_sessions([("/", "never"), ("/other", "gone"), ("/other", "gone")]))
    assert await take_back(store, "4" * 64, "/other") is None


# -- retention --------------------------------------------------------------------


async def test_purge_removes_old_packets_and_expired_sessions(store: Store) -> None:
    for i in range(5):
        await bounded(store.append(packet(i)))
    await asyncio.sleep(0.02)
    cutoff = time.time()
    await asyncio.sleep(0.02)
    for i in range(5, 8):
        await bounded(store.append(packet(i)))
    await save(store, session("1" * 64, expires_in=-1), session("2" * 64, expires_in=-1),
               session("3" * 64, expires_in=60))

    result = await bounded(store.purge(now=cutoff + 10, retention=10, batch_size=2))
    assert (result.packets, result.sessions, result.purged_through) == (5, 2, 5)
    bounds = await store.bounds()
    assert (bounds.top, bounds.purged_through) == (8, 5)
    assert [p.seq for p in await store.read(after=0, limit=100)] == [6, 7, 8]

    again = await bounded(store.purge(now=cutoff + 10, retention=10))
    assert (again.packets, again.sessions, again.purged_through) == (0, 0, 5)
    assert await take_back(store, "3" * 64) is not None


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


async def test_follow_with_nothing_delivered_elsewhere_delivers_everything(
        store: Store) -> None:
    """``skip_delivered`` says how far the listener got without the follower: at 0, every
    packet still comes (a store may also ignore it); ``on_reset`` is only kept."""
    collector = Collector()

    async def on_reset(after: int) -> None:
        raise AssertionError("the history was not replaced")

    await bounded(store.follow(collector, after=0, skip_delivered=lambda: 0,
                               on_reset=on_reset))
    for i in range(3):
        await bounded(store.append(packet(i)))
    await collector.wait_for(3)
    assert collector.seqs == [1, 2, 3]


# -- the SQL store on SQLite: several instances, durability, errors ----------------


async def test_sqlite_follower_skips_what_the_node_delivered_until_followed_anew(
        tmp_path: Path) -> None:
    async with SQLStore(sqlite_url(tmp_path), poll_interval=0.02) as store:
        delivered = [0]
        skipping = Collector()
        await bounded(store.follow(skipping, after=0, skip_delivered=lambda: delivered[0]))
        await bounded(store.following.wait())
        delivered[0] = 3  # as a node does for its own packets
        for i in range(5):
            await bounded(store.append(packet(i)))
        await skipping.wait_for(2)
        assert skipping.seqs == [4, 5]
        # a new follow() is configured by its own arguments only: nothing is skipped now
        everything = Collector()
        await bounded(store.follow(everything, after=5))
        await bounded(store.append(packet(5)))
        await everything.wait_for(1)
        assert everything.seqs == [6]


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
    await save(store, saved)
    await bounded(store.close())

    reopened = SQLStore(sqlite_url(tmp_path))
    await bounded(reopened.open())
    try:
        assert reopened.epoch == epoch
        assert (await reopened.bounds()).top == 3
        assert [p.data for p in await reopened.read(after=0, limit=10)] == [
            ["event", i] for i in range(3)
        ]
        assert await take_back(reopened) == saved
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


async def test_packets_are_found_by_target_and_their_entries_go_with_them(
        store: Store) -> None:
    from durable_adapter.stores.targets import NAMESPACE, TargetRange, room_target

    sent = [packet("all"), packet("a", rooms=("a",)), packet("chat-a", namespace="/chat",
            rooms=("a",)), packet("a-b", rooms=("a", "b", "a")), packet("b", rooms=("b",)),
            packet("all-but-a", except_rooms=("a",)), packet("sid", rooms=("sid1",))]
    seqs = [await bounded(store.append(p)) for p in sent]

    def ranges(after: int, limit: int = 100) -> list[TargetRange]:
        top = seqs[-1]
        return [TargetRange("/", NAMESPACE, after, top, limit),
                TargetRange("/", room_target("a"), after, top, limit),
                TargetRange("/", room_target("b"), after, top - 3, limit),
                TargetRange("/chat", room_target("a"), after, top, limit),
                TargetRange("/", room_target("sid1"), after, top, limit),
                TargetRange("/", room_target("nobody"), after, top, limit),
                TargetRange("/", room_target("a"), after, top, 1)]

    got = await bounded(store.read_targets(ranges(seqs[0] - 1)))
    assert [[p.data[1] for p in answer] for answer in got] == [
        ["all", "all-but-a"], ["a", "a-b"], ["a-b"], ["chat-a"], ["sid"], [], ["a"]]
    assert got[1][1] == (await bounded(store.read(after=seqs[3] - 1, limit=1)))[0]
    assert await bounded(store.read_targets([])) == []

    # everything older than a moment ago is purged, index entries with their packets
    await bounded(store.purge(now=time.time() + 1, retention=0))
    assert all(answer == [] for answer in await bounded(store.read_targets(ranges(0))))
    if isinstance(store, SQLStore):
        from durable_adapter.stores.sql.schema import packet_targets

        async with store.engine.connect() as connection:
            left = (await connection.execute(packet_targets.select())).all()
        assert left == []
    if type(store).__name__ == "RedisStore":  # every target zset deleted with its packets
        assert await store.redis.zcard(store.keys.targets) == 0  # type: ignore[attr-defined]
