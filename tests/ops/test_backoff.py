"""The one back-off of every retry loop (followers, LISTEN, write-through, cleanup worker):
waits jittered under a ceiling that doubles up to the max, so the nodes and workers that
one outage failed together do not all come back at the same instant."""

from __future__ import annotations

import asyncio
import time

import pytest

from durable_adapter._tasks import Backoff


def test_every_wait_is_under_its_doubling_ceiling_and_the_max() -> None:
    for _ in range(50):
        backoff = Backoff(1.0, 60.0)
        ceiling = 1.0
        for _ in range(12):
            delay = backoff.next()
            assert 0.0 <= delay <= ceiling <= 60.0
            ceiling = min(ceiling * 2, 60.0)


def test_instances_do_not_wait_in_lockstep() -> None:
    # twenty nodes failing at the same moment: their retries spread out
    firsts = {Backoff(1.0, 60.0).next() for _ in range(20)}
    assert len(firsts) > 1
    later = []
    for _ in range(20):
        backoff = Backoff(1.0, 60.0)
        for _ in range(7):
            backoff.next()
        later.append(backoff.next())  # ceiling at the max by now
    assert len(set(later)) > 1 and max(later) <= 60.0


def test_reset_starts_over_at_the_first_ceiling() -> None:
    backoff = Backoff(0.5, 30.0)
    for _ in range(10):
        backoff.next()
    backoff.reset()
    assert backoff.delay <= 0.5
    assert backoff.next() <= 0.5


def test_the_announced_delay_is_the_one_taken() -> None:
    backoff = Backoff(1.0, 60.0)
    announced = backoff.delay
    assert backoff.next() == announced


@pytest.mark.parametrize(("first", "most"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_bad_bounds_are_refused(first: float, most: float) -> None:
    with pytest.raises(ValueError):
        Backoff(first, most)


async def test_wait_ends_early_when_woken() -> None:
    backoff = Backoff(30.0, 60.0)
    while backoff.delay < 1.0:  # a draw long enough to tell a wake-up from the wait
        backoff.reset()
    wake = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, wake.set)
    started = time.monotonic()
    await asyncio.wait_for(backoff.wait(wake), 10)
    assert time.monotonic() - started < 1.0
