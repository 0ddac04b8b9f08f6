"""Live sessions and node leases, on every store of ``conftest.STORE_FACTORIES``.

A live session is written with its owning node; another node takes it over
(:meth:`Store.take_sessions`) only when the owner's lease expired (within the recovery
window after it), or when the owner handed it over (``force_from``). Times are passed
explicitly (``now``) around one real base time ``T``: no test waits for a clock.
At the end, 50 concurrent take-overs of one row on separate store instances (separate
connections, as separate processes) of SQLite, PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from durable_adapter.stores.base import LIVE_EXPIRY, OwnedBy, Session, Store, TakeRequest
from durable_adapter.stores.redis import RedisStore
from durable_adapter.stores.rules import MINE, TAKE, decide_take
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.postgres import PostgresStore
from tests._postgres import POSTGRES_URL, postgres_schema
from tests._redis import redis_prefix, store_url

from .conftest import WAIT, sqlite_url
from .test_store_contract import bounded

PID = "c" * 64
WINDOW = 120.0  # seconds a session stays recoverable after its disconnect or owner's death
LEASE = 10.0  # seconds a renewed lease lasts


def live(node: str | None, pid_hash: str = PID, *, sid: str = "sid1", namespace: str = "/",
         position: int = 3, expires_at: float = LIVE_EXPIRY) -> Session:
    """A session as a node writes it through: owned, never expiring by time."""
    return Session(
        pid_hash=pid_hash, namespace=namespace, sid=sid, rooms=(sid, "room1"),
        data={"user": "ada", "avatar": b"\x89PNG"}, epoch="e", start_seq=0,
        position=position, last_sent_seq=None, disconnected_at=0.0, expires_at=expires_at,
        owner=node)


def disconnected(pid_hash: str = PID, *, at: float, **fields: object) -> Session:
    """A session as a drop leaves it: no owner, expiring ``WINDOW`` after ``at``."""
    return dataclasses.replace(live(None, pid_hash), disconnected_at=at,
                               expires_at=at + WINDOW, **fields)  # type: ignore[arg-type]


async def take(store: Store, node: str, now: float, pid_hash: str = PID,
               force_from: str | None = None) -> Session | OwnedBy | None:
    (result,) = await bounded(store.take_sessions(
        [TakeRequest("/", pid_hash, force_from)], node=node, now=now, window=WINDOW))
    return result


async def owner_of(store: Store, pid_hash: str = PID) -> str | None:
    """Who owns the row (:meth:`Store.owners`); None when it is absent or unowned."""
    return (await bounded(store.owners([("/", pid_hash)]))).get(("/", pid_hash))


# -- the rules, without a store -------------------------------------------------------


@pytest.mark.parametrize(("owner", "expires_at", "lease", "force_from", "now", "verdict"), [
    (None, 100.0, None, None, 99.0, TAKE),  # disconnected, unexpired
    (None, 100.0, None, None, 100.0, None),  # disconnected, expired
    ("me", LIVE_EXPIRY, 50.0, None, 99.0, MINE),  # mine: even with my lease expired
    ("a", LIVE_EXPIRY, 100.0, None, 99.0, OwnedBy("a")),  # a live owner keeps it
    ("a", LIVE_EXPIRY, 100.0, "a", 99.0, TAKE),  # ... unless it handed it over
    ("a", LIVE_EXPIRY, 100.0, "b", 99.0, OwnedBy("a")),  # a handover from someone else
    ("a", LIVE_EXPIRY, 100.0, None, 100.0 + WINDOW - 1, TAKE),  # dead, within the window
    ("a", LIVE_EXPIRY, 100.0, None, 100.0 + WINDOW, None),  # dead too long
    ("a", LIVE_EXPIRY, None, None, 1000.0, None),  # no lease: dead since 0
    ("a", LIVE_EXPIRY, None, None, WINDOW - 1, TAKE),
    ("a", LIVE_EXPIRY, None, "a", 1000.0, TAKE),
])
def test_decide_take(owner: str | None, expires_at: float, lease: float | None,
                     force_from: str | None, now: float, verdict: object) -> None:
    assert decide_take(owner=owner, expires_at=expires_at, lease_expires=lease, node="me",
                       now=now, window=WINDOW, force_from=force_from) == verdict


# -- take_sessions, one row at a time -------------------------------------------------


async def test_take_of_an_absent_session_is_none(store: Store) -> None:
    assert await take(store, "a", time.time()) is None


async def test_take_of_a_disconnected_session_makes_the_caller_its_owner(store: Store) -> None:
    t = time.time()
    await store.renew_lease("a", now=t, expiry=LEASE)
    saved = disconnected(at=t, position=7)
    await bounded(store.save_sessions([saved]))
    taken = await take(store, "a", t + 1)
    assert taken == dataclasses.replace(saved, owner="a")
    assert await take(store, "b", t + 2) == OwnedBy("a")
    # the row is a live one now: a purge long after its old expiry leaves it
    await store.renew_lease("a", now=t + WINDOW + 5, expiry=LEASE)
    await bounded(store.purge(now=t + WINDOW + 10, retention=WINDOW))
    assert await owner_of(store) == "a"


async def test_take_of_an_expired_disconnected_session_is_none(store: Store) -> None:
    t = time.time()
    await bounded(store.save_sessions([disconnected(at=t - WINDOW + 30)]))
    assert await take(store, "a", t + 31) is None
    assert await owner_of(store) is None


async def test_take_of_its_own_session_returns_it_unchanged(store: Store) -> None:
    t = time.time()
    mine = live("a", position=11)
    await bounded(store.save_sessions([mine], node="a"))
    # with or without a lease: the caller checked its own sockets first
    assert await take(store, "a", t) == mine
    await store.renew_lease("a", now=t, expiry=LEASE)
    assert await take(store, "a", t) == mine


async def test_a_live_owner_keeps_its_session_unless_it_hands_it_over(store: Store) -> None:
    t = time.time()
    await store.renew_lease("a", now=t, expiry=LEASE)
    await store.renew_lease("b", now=t, expiry=LEASE)
    await bounded(store.save_sessions([live("a")], node="a"))
    assert await take(store, "b", t + LEASE - 1) == OwnedBy("a")
    assert await take(store, "b", t, force_from="c") == OwnedBy("a")  # not the owner
    taken = await take(store, "b", t, force_from="a")
    assert taken == live("b")
    assert await take(store, "a", t) == OwnedBy("b")


async def test_a_renewed_lease_keeps_the_session(store: Store) -> None:
    t = time.time()
    await store.renew_lease("a", now=t, expiry=LEASE)
    await bounded(store.save_sessions([live("a")], node="a"))
    await store.renew_lease("a", now=t + LEASE, expiry=LEASE)
    assert await take(store, "b", t + LEASE + 1) == OwnedBy("a")


async def test_a_dead_owner_s_session_is_taken_within_the_window(store: Store) -> None:
    t = time.time()
    await store.renew_lease("a", now=t, expiry=LEASE)
    await bounded(store.save_sessions([live("a", position=9)], node="a"))
    assert await take(store, "b", t + LEASE + WINDOW) is None  # dead for too long
    assert await owner_of(store) == "a"  # untouched
    taken = await take(store, "b", t + LEASE)
    assert taken == live("b", position=9)
    assert await take(store, "c", t + LEASE) is None  # b's lease: none, so b counts as dead
    await store.renew_lease("b", now=t + LEASE, expiry=LEASE)
    assert await take(store, "c", t + LEASE) == OwnedBy("b")


async def test_an_owner_without_a_lease_counts_as_dead_since_ever(store: Store) -> None:
    t = time.time()
    await store.renew_lease("a", now=t, expiry=LEASE)
    await bounded(store.save_sessions([live("a"), live("ghost", "d" * 64)], node=None))
    assert await take(store, "b", t, "d" * 64) is None
    assert await take(store, "b", t, "d" * 64, force_from="ghost") == live("b", "d" * 64)
    # a dropped lease (clean shutdown) is no lease
    await store.drop_lease("a")
    assert await take(store, "b", t) is None
    assert await take(store, "b", t, force_from="a") == live("b")


async def test_take_is_bound_to_its_namespace(store: Store) -> None:
    t = time.time()
    await bounded(store.save_sessions([disconnected(at=t, namespace="/chat")]))
    assert await take(store, "a", t) is None
    (taken,) = await bounded(store.take_sessions([TakeRequest("/chat", PID)], node="a", now=t,
                                                 window=WINDOW))
    assert isinstance(taken, Session) and taken.namespace == "/chat"


async def test_concurrent_takes_on_one_store_exactly_one_wins(store: Store) -> None:
    t = time.time()
    await bounded(store.save_sessions([disconnected(at=t)]))
    nodes = [f"n{i}" for i in range(50)]
    for node in nodes:
        await store.renew_lease(node, now=t, expiry=LEASE)
    results = await bounded(asyncio.gather(*(take(store, node, t) for node in nodes)))
    winners = [r for r in results if isinstance(r, Session)]
    assert len(winners) == 1 and winners[0].owner in nodes
    assert all(r == OwnedBy(winners[0].owner) for r in results if r is not winners[0])


# -- writes -----------------------------------------------------------------------------


async def test_a_save_leaves_a_session_another_node_took(store: Store) -> None:
    t = time.time()
    await store.renew_lease("b", now=t, expiry=LEASE)
    await bounded(store.save_sessions([live("b", position=5)], node="b"))
    # a's late write of its old socket, next to a session of its own
    await bounded(store.save_sessions([live("a", position=99), live("a", "e" * 64)], node="a"))
    assert await take(store, "b", t) == live("b", position=5)
    assert await take(store, "a", t, "e" * 64) == live("a", "e" * 64)  # written
    # a released row (owner none: another node took it and let it go at a drop) is not
    # this node's any more: left alone; without a node everything is written
    await bounded(store.save_sessions([disconnected("f" * 64, at=t)]))
    await bounded(store.save_sessions([live("a", "f" * 64)], node="a"))
    assert await take(store, "c", t, "f" * 64) == dataclasses.replace(
        disconnected("f" * 64, at=t), owner="c")
    await bounded(store.save_sessions([live("a", position=100)]))
    assert await take(store, "a", t) == live("a", position=100)


async def test_a_batch_writes_every_session_and_the_last_of_one_key(store: Store) -> None:
    t = time.time()
    batch = [live("a", f"{i:064x}", sid=f"s{i}") for i in range(30)]
    batch += [live("a", position=1), live("a", position=2)]
    await bounded(store.save_sessions(batch, node="a"))
    for session in batch[:30]:
        assert await take(store, "a", t, session.pid_hash) == session
    assert await take(store, "a", t) == live("a", position=2)


async def test_release_marks_the_session_disconnected(store: Store) -> None:
    t = time.time()
    await store.renew_lease("a", now=t, expiry=LEASE)
    await store.renew_lease("b", now=t, expiry=LEASE)
    await bounded(store.save_sessions([live("a")], node="a"))
    dropped = dataclasses.replace(live("a", position=4), disconnected_at=t, expires_at=t + 30)
    await bounded(store.release_session(dropped, node="a"))
    assert await take(store, "b", t + 31) is None  # expired from its disconnect on
    assert await take(store, "b", t + 1) == dataclasses.replace(dropped, owner="b")
    # a's late release of a session b took changes nothing
    await bounded(store.release_session(dropped, node="a"))
    assert await take(store, "a", t + 1) == OwnedBy("b")


async def test_delete_sessions_deletes_live_ones_too(store: Store) -> None:
    t = time.time()
    await store.renew_lease("a", now=t, expiry=LEASE)
    await bounded(store.save_sessions([live("a", sid="gone"), live("a", "e" * 64)], node="a"))
    await bounded(store.delete_sessions([("/", "gone")]))
    assert await take(store, "a", t) is None
    assert await take(store, "a", t, "e" * 64) == live("a", "e" * 64)


# -- purge ------------------------------------------------------------------------------


async def test_purge_keeps_live_nodes_sessions_and_deletes_a_dead_node_s(store: Store) -> None:
    t = time.time()
    retention = 300.0
    await store.renew_lease("alive", now=t, expiry=LEASE)
    await store.renew_lease("x", now=t, expiry=LEASE)  # the node taking below
    await store.renew_lease("dead", now=t - retention - 50, expiry=LEASE)  # long dead
    await store.renew_lease("recent", now=t - retention + 50, expiry=LEASE)  # dead lately
    await store.renew_lease("idle", now=t - retention - 50, expiry=LEASE)  # owns nothing
    pids = {name: f"{i:064x}" for i, name in enumerate(
        ("alive", "dead", "dead2", "recent", "ghost", "gone", "kept"))}
    await bounded(store.save_sessions([
        live("alive", pids["alive"]), live("dead", pids["dead"]), live("dead", pids["dead2"]),
        live("recent", pids["recent"]), live("ghost", pids["ghost"]),  # never had a lease
        disconnected(pids["gone"], at=t - WINDOW - 1),  # expired
        disconnected(pids["kept"], at=t - 1),
    ]))
    result = await bounded(store.purge(now=t, retention=retention, batch_size=1))
    assert result.sessions == 4  # dead's two, ghost's, and the expired one
    assert await owner_of(store, pids["alive"]) == "alive"
    assert await owner_of(store, pids["recent"]) == "recent"
    for name in ("dead", "dead2", "ghost", "gone"):
        assert await take(store, "x", t, pids[name], force_from=name) is None, name
    assert isinstance(await take(store, "x", t, pids["kept"]), Session)
    # "idle" and "dead" expired more than retention ago and own nothing now: their leases
    # went, and a session written under them counts as dead since ever
    await bounded(store.save_sessions([live("idle", "1" * 64), live("recent", "2" * 64)]))
    # (at t - retention, idle's old lease would still be within the window)
    assert await take(store, "x", t - retention, "1" * 64) is None
    # recent's lease stays: its session is taken within the window after it
    assert isinstance(await take(store, "x", t - 200, "2" * 64), Session)
    again = await bounded(store.purge(now=t, retention=retention))
    assert again.sessions == 1  # idle's, written after its lease went


# -- concurrent take-overs from separate instances ---------------------------------------


@asynccontextmanager
async def instances(kind: str, tmp_path: Path, count: int) -> AsyncIterator[list[Store]]:
    """``count`` opened stores on one database, each with its own connections."""
    async with _backend(kind, tmp_path, count) as stores:
        await bounded(asyncio.gather(*(store.open() for store in stores)))
        try:
            yield stores
        finally:
            await bounded(asyncio.gather(*(store.close() for store in stores)))


@asynccontextmanager
async def _backend(kind: str, tmp_path: Path, count: int) -> AsyncIterator[list[Store]]:
    if kind == "sqlite":
        yield [SQLStore(sqlite_url(tmp_path)) for _ in range(count)]
    elif kind == "postgres":
        async with postgres_schema() as schema:
            yield [PostgresStore(POSTGRES_URL, schema=schema) for _ in range(count)]
    else:
        with redis_prefix() as prefix:
            yield [RedisStore(store_url(prefix)) for _ in range(count)]


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
@pytest.mark.parametrize("owner", [None, "dead", "handing-over"])
async def test_fifty_concurrent_takes_across_instances_exactly_one_wins(
        kind: str, owner: str | None, tmp_path: Path) -> None:
    """A disconnected session, one of a dead node, and one a live node hands over."""
    async with instances(kind, tmp_path, 10) as stores:
        t = time.time()
        first = stores[0]
        if owner == "dead":
            await first.renew_lease(owner, now=t - LEASE - 1, expiry=LEASE)
        elif owner == "handing-over":
            await first.renew_lease(owner, now=t, expiry=LEASE)
        saved = disconnected(at=t) if owner is None else live(owner)
        await bounded(first.save_sessions([saved]))
        nodes = [f"n{i}" for i in range(50)]
        for node in nodes:
            await first.renew_lease(node, now=t, expiry=LEASE)
        force = "handing-over" if owner == "handing-over" else None
        results = await asyncio.wait_for(asyncio.gather(*(
            take(stores[i % len(stores)], node, t, force_from=force)
            for i, node in enumerate(nodes))), 2 * WAIT)
        winners = [r for r in results if isinstance(r, Session)]
        assert len(winners) == 1, results
        winner = winners[0].owner
        assert winner in nodes and winners[0] == dataclasses.replace(saved, owner=winner)
        assert all(r == OwnedBy(winner) for r in results if r is not winners[0])
        assert await owner_of(stores[-1]) == winner


# -- Redis: an owned session has no TTL ---------------------------------------------------


async def test_redis_a_taken_session_loses_its_ttl_and_a_released_one_gets_it(
        tmp_path: Path) -> None:
    async with instances("redis", tmp_path, 1) as (store,):
        assert isinstance(store, RedisStore)
        t = time.time()
        key = store.keys.session("/", PID)
        await bounded(store.save_sessions([disconnected(at=t)]))
        assert 0 < await store.redis.pttl(key) <= WINDOW * 1000
        await take(store, "a", t)
        assert await store.redis.pttl(key) == -1
        assert await store.redis.zscore(store.keys.expiry, key) is None
        await bounded(store.release_session(disconnected(at=t), node="a"))
        assert 0 < await store.redis.pttl(key) <= WINDOW * 1000
        assert await store.redis.smembers(store.keys.owned_prefix + "a") == set()
