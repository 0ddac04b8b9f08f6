"""Reconnect storms batched (issue 10, item 4): the restores under way on one node share
store calls. Concurrent takes go to the store as one :meth:`Store.take_sessions` call,
concurrent bounds reads as one query; every client still recovers what it missed.
The store calls are counted on the real store (the calls go through), not mocked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from durable_adapter._batch import Batcher
from durable_adapter._restore import TAKES_IN_FLIGHT
from durable_adapter.exceptions import StoreError
from durable_adapter.stores.base import HistoryBounds, Store, TakeRequest, TakeResult
from tests._harness import until
from tests.conformance.conftest import Node, Peer, StoreSpec, running
from tests.conformance.test_replay_cache import _drop_all, _recover_all

CLIENTS = 30


class Counted:
    """Counts ``take_sessions`` calls (and the requests in them) and ``bounds`` calls on a
    real store. Each take call waits until ``expected`` requests were made in all (those
    of the calls under way and those queued behind them), so the restores of the test
    are all under way at once whatever the machine's speed."""

    def __init__(self, node: Node, expected: int) -> None:
        store: Store = node.sio.store
        self.takes: list[int] = []
        self.bounds = 0
        take, bounds = store.take_sessions, store.bounds
        batcher = node.sio._restorer.takes

        async def take_sessions(requests: Sequence[TakeRequest], **kwargs: Any
                                ) -> list[TakeResult]:
            self.takes.append(len(requests))
            await until(lambda: sum(self.takes) + batcher.queued == expected,
                        lambda: f"{sum(self.takes)} takes asked for and {batcher.queued} "
                                f"queued, not {expected}")
            return await take(requests, **kwargs)

        async def counted_bounds() -> HistoryBounds:
            self.bounds += 1
            return await bounds()

        store.take_sessions = take_sessions  # type: ignore[method-assign]
        store.bounds = counted_bounds  # type: ignore[method-assign]


async def test_concurrent_recoveries_share_take_and_bounds_calls(store_url: StoreSpec) -> None:
    async with running(store_url) as node:
        peers = [Peer() for _ in range(CLIENTS)]
        await asyncio.gather(*(peer.connect(node.url) for peer in peers))
        states = await _drop_all(node, peers)
        missed = [f"m{i}" for i in range(5)]
        for data in missed:
            await node.sio.emit("tick", data)

        counted = Counted(node, CLIENTS)
        peers = await _recover_all(node, states, missed)  # each recovered, all it missed
        assert sum(counted.takes) == CLIENTS  # every restore took its session, once
        # the first calls (as many as may be under way) alone, the rest in one more
        assert len(counted.takes) <= TAKES_IN_FLIGHT + 1, counted.takes
        # two bounds checks per restore without sharing; a few queries with it
        assert counted.bounds <= CLIENTS // 3, counted.bounds
        assert node.sio.durable_manager.recovers("/")
        await asyncio.gather(*(peer.client.disconnect() for peer in peers))


# -- the batcher itself -------------------------------------------------------------------


class Calls:
    """A ``run`` whose calls wait for a gate, recording what each call was asked."""

    def __init__(self) -> None:
        self.asked: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, requests: list[int]) -> list[int]:
        self.asked.append(list(requests))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [r * 10 + len(self.asked) for r in requests]


async def test_a_request_made_during_a_call_waits_for_the_next_call() -> None:
    """What the shared bounds read relies on: an answer always comes from a call that
    started after the request was made."""
    calls = Calls()
    batcher: Batcher[int, int] = Batcher(calls, batch_max=100, name="test")
    first = asyncio.ensure_future(batcher.submit(1))
    await until(lambda: calls.asked == [[1]], "the first call")
    later = [asyncio.ensure_future(batcher.submit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    assert calls.asked == [[1]] and batcher.queued == 3
    calls.gate.set()
    assert await first == 11  # call 1
    assert await asyncio.gather(*later) == [22, 32, 42]  # all three in call 2
    assert calls.asked == [[1], [2, 3, 4]] and batcher.calls == 2


async def test_a_call_takes_at_most_batch_max_requests() -> None:
    calls = Calls()
    calls.gate.set()
    batcher: Batcher[int, int] = Batcher(calls, batch_max=2, name="test")
    answers = await asyncio.gather(*(batcher.submit(n) for n in range(5)))
    assert [len(asked) for asked in calls.asked] == [2, 2, 1]
    assert [a // 10 for a in answers] == list(range(5))


async def test_a_failed_call_fails_each_of_its_callers_only() -> None:
    calls = Calls()
    calls.fail = OSError("connection reset")
    batcher: Batcher[int, int] = Batcher(calls, batch_max=100, name="taking sessions")
    unlucky = [asyncio.ensure_future(batcher.submit(n)) for n in range(3)]
    await until(lambda: len(calls.asked) == 1, "the call")
    calls.gate.set()
    for future in unlucky:
        with pytest.raises(StoreError, match="taking sessions failed") as caught:
            await future
        assert isinstance(caught.value.__cause__, OSError)
    calls.fail = None
    assert await batcher.submit(7) == 72


async def test_a_caller_that_gave_up_is_not_asked_for() -> None:
    calls = Calls()
    batcher: Batcher[int, int] = Batcher(calls, batch_max=100, name="test")
    first = asyncio.ensure_future(batcher.submit(1))
    await until(lambda: len(calls.asked) == 1, "the first call")
    gone = asyncio.ensure_future(batcher.submit(2))
    kept = asyncio.ensure_future(batcher.submit(3))
    await asyncio.sleep(0)
    gone.cancel()
    calls.gate.set()
    assert await first == 11 and await kept == 32
    assert calls.asked == [[1], [3]]


async def test_with_calls_in_flight_a_request_made_during_a_call_starts_its_own() -> None:
    """in_flight 2: a request made while a call runs does not wait for that call, and
    its answer still comes from a call that started after it was made."""
    calls = Calls()
    batcher: Batcher[int, int] = Batcher(calls, batch_max=100, name="test", in_flight=2)
    first = asyncio.ensure_future(batcher.submit(1))
    await until(lambda: calls.asked == [[1]], "the first call")
    second = asyncio.ensure_future(batcher.submit(2))
    await until(lambda: calls.asked == [[1], [2]], "a second call, the first still running")
    third = asyncio.ensure_future(batcher.submit(3))
    await asyncio.sleep(0)
    assert batcher.queued == 1  # two calls under way: it waits for one of them to end
    calls.gate.set()
    assert [a // 10 for a in await asyncio.gather(first, second, third)] == [1, 2, 3]
    assert calls.asked == [[1], [2], [3]] and batcher.calls == 3
