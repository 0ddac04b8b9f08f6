"""Batched take-overs (:meth:`Store.take_sessions`), on every store of
``conftest.STORE_FACTORIES``: each answer is the one a batch of that row alone gives,
duplicates in one batch get the session once, and at the end several store instances (as
several nodes) take overlapping batches at once: every row goes to exactly one of them,
on SQLite, PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from durable_adapter.stores.base import LIVE_EXPIRY, OwnedBy, Session, Store, TakeRequest
from durable_adapter.stores.base import TakeResult as Result
from durable_adapter.stores.memory import MemoryStore
from durable_adapter.stores.rules import take_one_by_one

from .conftest import WAIT
from .test_live_sessions import LEASE, WINDOW, disconnected, instances, live, owner_of
from .test_store_contract import bounded


def pid(i: int) -> str:
    return f"{i:064x}"


async def take_all(store: Store, node: str, now: float, requests: list[TakeRequest]
                   ) -> list[Result]:
    return await bounded(store.take_sessions(requests, node=node, now=now, window=WINDOW))


async def test_an_empty_batch_takes_nothing(store: Store) -> None:
    assert await take_all(store, "a", time.time(), []) == []


async def test_a_mixed_batch_answers_each_row_by_the_rules(store: Store) -> None:
    t = time.time()
    for node, at in (("b", t), ("alive", t), ("handing", t), ("dead", t - LEASE - 1)):
        await store.renew_lease(node, now=at, expiry=LEASE)
    await store.renew_lease("long-dead", now=t - LEASE - WINDOW - 1, expiry=LEASE)
    rows = {
        "free": disconnected(pid(1), at=t - 5, position=4),
        "expired": disconnected(pid(2), at=t - WINDOW - 1),
        "mine": live("b", pid(3), position=6),
        "alive": live("alive", pid(4)),
        "handing": live("handing", pid(5), position=8),
        "dead": live("dead", pid(6), position=9),
        "long-dead": live("long-dead", pid(7)),
        "ghost": live("ghost", pid(8)),  # an owner that never had a lease
        "other-ns": disconnected(pid(9), at=t, namespace="/chat"),
    }
    await bounded(store.save_sessions(list(rows.values())))
    requests = [
        TakeRequest("/", pid(1)), TakeRequest("/", pid(0)),  # free, absent
        TakeRequest("/", pid(2)), TakeRequest("/", pid(3)),  # expired, mine
        TakeRequest("/", pid(4)), TakeRequest("/", pid(4), force_from="someone"),  # alive
        TakeRequest("/", pid(5), force_from="handing"), TakeRequest("/", pid(6)),
        TakeRequest("/", pid(7)), TakeRequest("/", pid(8)),
        TakeRequest("/", pid(9)), TakeRequest("/chat", pid(9)),  # bound to its namespace
    ]
    answers = await take_all(store, "b", t, requests)
    assert answers == [
        dataclasses.replace(rows["free"], owner="b"), None,
        None, rows["mine"],
        OwnedBy("alive"), OwnedBy("alive"),
        dataclasses.replace(rows["handing"], owner="b"),
        dataclasses.replace(rows["dead"], owner="b"),
        None, None,
        None, dataclasses.replace(rows["other-ns"], owner="b"),
    ]
    # what was taken is b's now; what was refused is as it was
    for key in (1, 3, 5, 6):
        assert await owner_of(store, pid(key)) == "b", key
    assert await owner_of(store, pid(4)) == "alive"
    assert await owner_of(store, pid(7)) == "long-dead"
    assert await owner_of(store, pid(2)) is None


async def test_each_answer_equals_that_of_a_take_alone(store: Store) -> None:
    """The same rows taken one by one on a second copy of the state: same answers."""
    t = time.time()
    await store.renew_lease("alive", now=t, expiry=LEASE)
    await store.renew_lease("dead", now=t - LEASE - 1, expiry=LEASE)
    owners = [None, "alive", "dead", "a"]
    saved = [disconnected(pid(i), at=t) if owners[i % 4] is None
             else live(owners[i % 4], pid(i)) for i in range(20)]
    saved += [disconnected(pid(i + 20), at=t - WINDOW - 1) for i in range(4)]
    namespaces = ["/", "/x"]
    copies = [dataclasses.replace(s, namespace=ns) for ns in namespaces for s in saved]
    await bounded(store.save_sessions(copies))
    requests = [TakeRequest("/", pid(i), force_from="alive" if i % 8 == 1 else None)
                for i in range(25)]
    batched = await take_all(store, "a", t, requests)
    alone = [(await take_all(store, "a", t, [TakeRequest("/x", r.pid_hash, r.force_from)]))[0]
             for r in requests]
    assert batched == [a if not isinstance(a, Session) else dataclasses.replace(a, namespace="/")
                       for a in alone]
    assert sum(isinstance(a, Session) for a in batched) == 18


async def test_duplicates_in_one_batch_get_the_session_once(store: Store) -> None:
    t = time.time()
    await store.renew_lease("alive", now=t, expiry=LEASE)
    await bounded(store.save_sessions([disconnected(pid(1), at=t), live("a", pid(2)),
                                       live("alive", pid(3))]))
    free, mine, handed = TakeRequest("/", pid(1)), TakeRequest("/", pid(2)), \
        TakeRequest("/", pid(3), force_from="alive")
    answers = await take_all(store, "a", t, [free, mine, free, handed, mine,
                                             TakeRequest("/", pid(3)), handed, free])
    # the first request of each row gets it; the later ones, whatever they ask, None
    assert [i for i, answer in enumerate(answers) if isinstance(answer, Session)] == [0, 1, 3]
    assert [answers[i] for i in (2, 4, 5, 6, 7)] == [None] * 5
    # a request that does not get the row leaves it to a later one of the same batch
    await bounded(store.save_sessions([live("alive", pid(4))]))
    first, then = await take_all(store, "a", t, [
        TakeRequest("/", pid(4)), TakeRequest("/", pid(4), force_from="alive")])
    assert first == OwnedBy("alive") and isinstance(then, Session) and then.owner == "a"


async def test_a_batch_larger_than_one_statement_takes_every_row(store: Store) -> None:
    t = time.time()
    count = 450  # more keys than one SQL statement carries (leases.KEYS_PER_STATEMENT)
    await bounded(store.save_sessions([disconnected(pid(i), at=t) for i in range(count)]))
    requests = [TakeRequest("/", pid(i)) for i in reversed(range(count + 10))]
    answers = await take_all(store, "a", t, requests)
    assert [a.pid_hash for a in answers if isinstance(a, Session)] == \
        [pid(i) for i in reversed(range(count))]
    assert answers[:10] == [None] * 10
    assert all(isinstance(a, Session) and a.owner == "a" and a.expires_at < LIVE_EXPIRY
               for a in answers[10:])
    # taken: another node with a live lease is told a owns them
    await store.renew_lease("a", now=t, expiry=LEASE)
    again = await take_all(store, "b", t, requests[10:20])
    assert again == [OwnedBy("a")] * 10


# -- overlapping batches of several nodes at once ----------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
async def test_overlapping_batches_of_several_nodes_give_each_row_to_one(
        kind: str, tmp_path: Path) -> None:
    """Four nodes (store instances, own connections) each take a random 60% of 200 rows,
    in a random order, in batches of up to 50, all at once: each row ends with exactly
    one of them, and every other request for it saw that owner (or came too late in its
    own batch). On PostgreSQL rows are locked in key order: no deadlock."""
    rng = random.Random(7)
    nodes = ["n0", "n1", "n2", "n3"]
    async with instances(kind, tmp_path, len(nodes)) as stores:
        t = time.time()
        for node in nodes:
            await stores[0].renew_lease(node, now=t, expiry=LEASE)
        rows = 200
        await bounded(stores[0].save_sessions([disconnected(pid(i), at=t) for i in range(rows)]))
        plans = []
        for _ in nodes:
            wanted = rng.sample(range(rows), k=rows * 6 // 10)
            plans.append([[TakeRequest("/", pid(i)) for i in wanted[start:start + 50]]
                          for start in range(0, len(wanted), 50)])

        async def run(store: Store, node: str, batches: list[list[TakeRequest]]
                      ) -> list[tuple[TakeRequest, Result]]:
            out: list[tuple[TakeRequest, Result]] = []
            answers = await asyncio.gather(*(store.take_sessions(
                batch, node=node, now=t, window=WINDOW) for batch in batches))
            for batch, batch_answers in zip(batches, answers, strict=True):
                out += zip(batch, batch_answers, strict=True)
            return out

        results = await asyncio.wait_for(asyncio.gather(*(
            run(store, node, plan) for store, node, plan in zip(stores, nodes, plans,
                                                                strict=True))), 3 * WAIT)
        winners: dict[str, str] = {}
        seen: dict[str, list[Result]] = {}
        for node, answers in zip(nodes, results, strict=True):
            for request, answer in answers:
                seen.setdefault(request.pid_hash, []).append(answer)
                if isinstance(answer, Session):
                    assert answer.owner == node
                    assert request.pid_hash not in winners, request.pid_hash
                    winners[request.pid_hash] = node
        assert set(winners) == set(seen)  # every row asked for went to someone
        for pid_hash, got in seen.items():
            assert all(a == OwnedBy(winners[pid_hash]) for a in got
                       if not isinstance(a, Session)), got
            assert await owner_of(stores[-1], pid_hash) == winners[pid_hash]


# -- a store that takes one row at a time -----------------------------------------------


class OneByOne(MemoryStore):
    """A store whose own take is of one row: its batches go through take_one_by_one."""

    async def take_sessions(self, requests: Sequence[TakeRequest], *, node: str, now: float,
                            window: float) -> list[Result]:
        return await take_one_by_one(requests, lambda request: self._take(
            request, node=node, now=now, window=window))

    async def _take(self, request: TakeRequest, *, node: str, now: float, window: float
                    ) -> Result:
        (result,) = await MemoryStore.take_sessions(self, [request], node=node, now=now,
                                                    window=window)
        return result


async def test_a_store_taking_one_row_at_a_time_gives_duplicates_the_session_once() -> None:
    store = OneByOne()
    await store.open()
    t = time.time()
    await bounded(store.save_sessions([disconnected(pid(1), at=t), live("a", pid(2))]))
    answers = await take_all(store, "a", t, [
        TakeRequest("/", pid(1)), TakeRequest("/", pid(2)), TakeRequest("/", pid(1)),
        TakeRequest("/", pid(2)), TakeRequest("/", pid(3))])
    assert [type(a).__name__ for a in answers] == \
        ["Session", "Session", "NoneType", "NoneType", "NoneType"]


def test_a_store_must_take_batches() -> None:
    class Incomplete(MemoryStore):
        take_sessions = Store.take_sessions  # abstract: no default any more

    with pytest.raises(TypeError, match="take_sessions"):
        Incomplete()
