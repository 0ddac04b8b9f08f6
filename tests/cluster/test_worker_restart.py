"""Worker processes on one SQLite file: one is stopped or killed, then started again."""

from __future__ import annotations

import signal
from pathlib import Path

from tests._harness import until
from tests.cluster.harness import Listener, NodeProcess, cluster


async def _wait_received(listener: Listener, count: int) -> None:
    await until(lambda: len(listener.received) >= count,
                lambda: f"{count} events on {listener.name}, got {len(listener.received)}",
                within=30)


async def _restart(node: NodeProcess, sig: int) -> None:
    port = int(node.url.rsplit(":", 1)[1])
    await node.stop(sig)
    await node.start(port=port)


async def test_stopped_worker_restarts_and_its_clients_recover(tmp_path: Path) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path / 'workers.db'}"
    async with cluster(store, 2) as (first, second):
        on_first, on_second = Listener("a"), Listener("b")
        await on_first.connect(first.url)
        await on_second.connect(second.url)
        await second.post("/emit", {"tag": "before", "start": 0, "count": 20})
        await _wait_received(on_first, 20)

        # SIGTERM: the worker saves the sessions of its live sockets before exiting
        await _restart(first, signal.SIGTERM)
        await second.post("/emit", {"tag": "while", "start": 0, "count": 30})
        await on_first.hop(first.url)
        assert on_first.recoveries == 1
        await first.post("/emit", {"tag": "after", "start": 0, "count": 10})
        for listener in (on_first, on_second):
            await _wait_received(listener, 60)
            assert [(t, i) for t, i, _ in listener.received] == (
                [("before", i) for i in range(20)] + [("while", i) for i in range(30)]
                + [("after", i) for i in range(10)])
        await on_first.close()
        await on_second.close()


async def test_killed_worker_restarts_and_the_others_lose_nothing(tmp_path: Path) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path / 'workers.db'}"
    async with cluster(store, 2) as (first, second):
        on_first, on_second = Listener("a"), Listener("b")
        await on_first.connect(first.url)
        await on_second.connect(second.url)
        await first.post("/emit", {"tag": "before", "start": 0, "count": 20})
        await _wait_received(on_second, 20)

        # SIGKILL: the killed worker's clients recover from their written-through
        # sessions (issue 11), on the restarted worker, with everything they missed
        await _restart(first, signal.SIGKILL)
        await second.post("/emit", {"tag": "while", "start": 0, "count": 30})
        await on_first.hop(first.url)
        assert on_first.recoveries == 1 and on_first.refusals == 0
        await first.post("/emit", {"tag": "after", "start": 0, "count": 10})
        await _wait_received(on_second, 60)
        expected = ([("before", i) for i in range(20)] + [("while", i) for i in range(30)]
                    + [("after", i) for i in range(10)])
        assert [(t, i) for t, i, _ in on_second.received] == expected
        # the restarted worker follows the shared history from where it stands
        await _wait_received(on_first, 60)
        assert [(t, i) for t, i, _ in on_first.received] == expected
        await on_first.close()
        await on_second.close()
