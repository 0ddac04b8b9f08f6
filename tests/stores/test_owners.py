"""Who owns stored sessions (:meth:`Store.owners`), on every store of
``conftest.STORE_FACTORIES``: a read of many keys at once that changes nothing. At the
end, that it is one round trip: one SELECT per 400 keys on SQLite and PostgreSQL, one
script call on Redis.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from durable_adapter.stores.base import OwnedBy, Session, Store, TakeRequest
from durable_adapter.stores.redis import RedisStore
from durable_adapter.stores.sql import SQLStore

from .test_live_sessions import LEASE, WINDOW, disconnected, instances, live
from .test_store_contract import bounded


def pid(i: int) -> str:
    return f"{i:064x}"


async def test_no_keys_no_owners(store: Store) -> None:
    assert await bounded(store.owners([])) == {}


async def test_each_stored_session_s_owner_and_nothing_for_absent_ones(store: Store) -> None:
    t = time.time()
    await store.renew_lease("a", now=t, expiry=LEASE)
    await store.renew_lease("b", now=t, expiry=LEASE)
    await bounded(store.save_sessions([
        disconnected(pid(1), at=t), live("a", pid(2)), live("a", pid(3)),
        disconnected(pid(4), at=t, namespace="/chat")]))
    # b takes a's pid(3) over (a handed it over): b's now
    (taken,) = await bounded(store.take_sessions(
        [TakeRequest("/", pid(3), force_from="a")], node="b", now=t, window=WINDOW))
    assert isinstance(taken, Session)
    keys = [("/", pid(i)) for i in range(6)] + [("/chat", pid(4)), ("/chat", pid(1))]
    assert await bounded(store.owners(keys)) == {
        ("/", pid(1)): None,  # disconnected
        ("/", pid(2)): "a",  # live
        ("/", pid(3)): "b",  # taken by another node
        ("/chat", pid(4)): None,  # bound to its namespace
    }
    # a key asked twice is answered once
    assert await bounded(store.owners([("/", pid(2)), ("/", pid(2))])) == {("/", pid(2)): "a"}


async def test_an_owner_s_lease_does_not_matter(store: Store) -> None:
    """The stored owner, alive or not: whether it may still be taken is take_sessions'."""
    t = time.time()
    await store.renew_lease("dead", now=t - WINDOW - LEASE - 1, expiry=LEASE)
    await bounded(store.save_sessions([live("dead", pid(1)), live("ghost", pid(2))]))
    assert await bounded(store.owners([("/", pid(1)), ("/", pid(2))])) == {
        ("/", pid(1)): "dead", ("/", pid(2)): "ghost"}


async def test_reading_owners_changes_nothing(store: Store) -> None:
    t = time.time()
    await store.renew_lease("a", now=t, expiry=LEASE)
    free = disconnected(pid(1), at=t, position=5)
    mine = live("a", pid(2), position=6)
    await bounded(store.save_sessions([free, mine]))
    keys = [("/", pid(1)), ("/", pid(2)), ("/", pid(3))]
    first = await bounded(store.owners(keys))
    assert await bounded(store.owners(keys)) == first == {("/", pid(1)): None,
                                                          ("/", pid(2)): "a"}
    # the disconnected one kept its expiry: at it, nobody takes it (a refused take
    # changes nothing either)
    (late,) = await bounded(store.take_sessions(
        [TakeRequest("/", pid(1))], node="b", now=free.expires_at, window=WINDOW))
    assert late is None
    # the live one is still a's
    await store.renew_lease("b", now=t, expiry=LEASE)
    (owned,) = await bounded(store.take_sessions(
        [TakeRequest("/", pid(2))], node="b", now=t, window=WINDOW))
    assert owned == OwnedBy("a")
    # read back through takes: each row exactly as saved, no third one appeared
    answers = await bounded(store.take_sessions(
        [TakeRequest("/", pid(i)) for i in (1, 2, 3)], node="a", now=t + 1, window=WINDOW))
    assert answers == [dataclasses.replace(free, owner="a"), mine, None]


async def test_a_batch_larger_than_one_statement_is_answered_whole(store: Store) -> None:
    t = time.time()
    count = 450  # more keys than one SQL statement carries (leases.KEYS_PER_STATEMENT)
    await bounded(store.save_sessions(
        [live("a", pid(i)) if i % 2 else disconnected(pid(i), at=t) for i in range(count)]))
    keys = [("/", pid(i)) for i in reversed(range(count + 20))]
    owners = await bounded(store.owners(keys))
    assert owners == {("/", pid(i)): "a" if i % 2 else None for i in range(count)}


async def test_sessions_of_many_sockets_are_deleted_at_once(store: Store) -> None:
    """Many sockets leaving at once: each socket's rows go, live or not, the others stay."""
    t = time.time()
    count = 450  # more sockets than one SQL statement carries (store.DELETE_CHUNK)
    await store.renew_lease("a", now=t, expiry=LEASE)
    await bounded(store.save_sessions(
        [live("a", pid(i), sid=f"sid{i}") if i % 3 else
         disconnected(pid(i), at=t, sid=f"sid{i}") for i in range(count)], node="a"))
    await bounded(store.delete_sessions([("/", f"sid{i}") for i in range(0, count, 2)]))
    owners = await bounded(store.owners([("/", pid(i)) for i in range(count)]))
    assert set(owners) == {("/", pid(i)) for i in range(1, count, 2)}


# -- one round trip ------------------------------------------------------------------------


def queries(statements: list[str]) -> list[str]:
    """The statements' verbs, without SQLite's BEGIN of the read transaction."""
    return [verb for s in statements if (verb := s.split()[0].upper()) != "BEGIN"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_sql_reads_owners_with_one_select_per_400_keys(kind: str, tmp_path: Path) -> None:
    async with instances(kind, tmp_path, 1) as (store,):
        assert isinstance(store, SQLStore)
        await bounded(store.save_sessions([live("a", pid(i)) for i in range(10)]))
        statements: list[str] = []

        def seen(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements.append(statement)

        event.listen(store.engine.sync_engine, "before_cursor_execute", seen)
        try:
            assert len(await bounded(store.owners([("/", pid(i)) for i in range(10)]))) == 10
            assert queries(statements) == ["SELECT"]
            statements.clear()
            await bounded(store.owners([("/", pid(i)) for i in range(801)]))
            assert queries(statements) == ["SELECT"] * 3
        finally:
            event.remove(store.engine.sync_engine, "before_cursor_execute", seen)


async def test_redis_reads_owners_with_one_script_call(tmp_path: Path) -> None:
    async with instances("redis", tmp_path, 1) as (store,):
        assert isinstance(store, RedisStore)
        t = time.time()
        await bounded(store.save_sessions([live("a", pid(i)) if i % 2 else
                                           disconnected(pid(i), at=t) for i in range(500)]))
        keys = [("/", pid(i)) for i in range(600)]
        await bounded(store.owners(keys))  # the first call may load the script too
        commands: list[Any] = []
        execute = store.redis.execute_command

        async def counted(*args: Any, **options: Any) -> Any:
            commands.append(args[0])
            return await execute(*args, **options)

        store.redis.execute_command = counted  # type: ignore[method-assign]
        try:
            owners = await bounded(store.owners(keys))
        finally:
            del store.redis.execute_command
        assert commands == ["EVALSHA"]
        assert owners == {("/", pid(i)): "a" if i % 2 else None for i in range(500)}
        # read-only: a disconnected session kept its TTL
        assert 0 < await store.redis.pttl(store.keys.session("/", pid(0))) <= WINDOW * 1000
