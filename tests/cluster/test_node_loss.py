"""A node lost under its clients, with another node on the same store (issue 11): killed
(SIGKILL: nothing runs at exit, so only what was written through and the node's expired
lease let another node take its sessions over), or stopped by uvicorn on SIGTERM (the
lifespan shutdown saves); each also with sync nodes (``durable_adapter.Server``, issue
23). The clients come back on the other node and must recover on that first reconnect,
with every event they missed once, in order.
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests import _harness
from tests.cluster.conftest import ClusterStore
from tests.cluster.harness import Listener, NodeProcess
from tests.cluster.node_app import LEASE_EXPIRY_ENV
from tests.sync._nodes import cluster_node

WAIT = 30.0  # seconds for a hundred clients to see one thing happen
until = functools.partial(_harness.until, within=WAIT)
LEASE_EXPIRY = 2.0  # seconds: the killed node's sessions are free to take after this
EXIT_WITHIN = 5.0  # seconds from SIGTERM to the process's exit (issue 11)
SYNC_CLIENTS = 30  # clients of the SIGKILL case on sync nodes


@asynccontextmanager
async def nodes(*members: NodeProcess) -> AsyncIterator[None]:
    try:
        for node in members:  # one at a time: the first may create the schema
            await node.start()
        yield
    finally:
        await asyncio.gather(*(node.stop() for node in members))


def node(name: str, store: ClusterStore, server: str = "aiohttp") -> NodeProcess:
    return cluster_node(name, store.url, store.args, {LEASE_EXPIRY_ENV: str(LEASE_EXPIRY)},
                        server=server)


def seen(listener: Listener) -> list[tuple[str, int]]:
    return [(tag, i) for tag, i, _ in listener.received]


async def come_back(old: list[Listener], url: str) -> list[Listener]:
    """Each client, once it saw its connection end, reconnects to ``url`` with its pid
    and offset; returns the successors (each starts with what its old client got)."""
    for listener in old:
        assert listener.client is not None
        await _harness.settle_handlers(listener.client)
    successors = [Listener(f"{listener.name}'") for listener in old]
    for successor, listener in zip(successors, old, strict=True):
        successor.received = list(listener.received)
    await asyncio.gather(*(
        successor.connect(url, listener.client.recovery_state())  # type: ignore[union-attr]
        for successor, listener in zip(successors, old, strict=True)))
    return successors


async def close_all(*groups: list[Listener]) -> None:
    await asyncio.gather(*(listener.close() for group in groups for listener in group),
                         return_exceptions=True)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("server", ["aiohttp", "sync"])
async def test_sigkill_of_a_node_under_traffic(fault_store: ClusterStore, server: str) -> None:
    """100 clients on ``a``, ``b`` emitting to everyone before, while and after ``a`` is
    killed: all but one at most recover on ``b`` with every event once, in order; any
    other gets a fresh session and ``b`` says why (its RecoveryFailure). ``sync``: both
    nodes are ``durable_adapter.Server`` (threads, its loop in a thread of its own), with
    30 clients (the suite's time: the same paths, fewer sockets)."""
    a, b = node("a", fault_store, server), node("b", fault_store, server)
    size = SYNC_CLIENTS if server == "sync" else 100
    clients: list[Listener] = [Listener(f"c{i}") for i in range(size)]
    successors: list[Listener] = []
    async with nodes(b, a):
        try:
            await asyncio.gather(*(client.connect(a.url) for client in clients))
            await b.post("/emit", {"tag": "before", "start": 0, "count": 5})
            await until(lambda: all(len(c.received) == 5 for c in clients), "before")
            # traffic while the kill lands: some of it reaches the clients through a,
            # the rest they must recover
            during = asyncio.create_task(
                b.post("/emit", {"tag": "during", "start": 0, "count": 20}))
            assert a.process is not None
            a.process.kill()
            await asyncio.wait_for(a.process.wait(), WAIT)
            await during
            successors = await come_back(clients, b.url)
            await b.post("/emit", {"tag": "after", "start": 0, "count": 5})

            expected = [*(("before", i) for i in range(5)),
                        *(("during", i) for i in range(20)),
                        *(("after", i) for i in range(5))]
            recovered = [s for s in successors if s.recoveries]
            fresh = [s for s in successors if s.refusals]
            assert len(recovered) >= size - 1, f"only {len(recovered)} of {size} recovered"
            for successor, old in zip(successors, clients, strict=True):
                if successor.recoveries:
                    assert successor.sid == old.sid
            await until(lambda: all(seen(s) == expected for s in recovered),
                        lambda: "every missed event once, in order: " + next(
                            f"{s.name} got {seen(s)}" for s in recovered
                            if seen(s) != expected))
            for successor in fresh:
                connect = await b.connect_of(successor.sid or "")
                assert connect is not None and connect["failure"], \
                    f"{successor.name}: a fresh session without a reason ({connect})"
        finally:
            await close_all(clients, successors)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("server", ["uvicorn", "sync"])
async def test_sigterm_of_a_node(fault_store: ClusterStore, server: str) -> None:
    """``a`` runs ``durable_adapter.ASGIApp`` under uvicorn as a user runs it (``sync``:
    ``durable_adapter.Server`` behind Werkzeug, and ``b`` too): on SIGTERM it exits within
    5 s with websocket clients connected, and they recover on ``b``."""
    a = node("a", fault_store, server)
    b = node("b", fault_store, "sync" if server == "sync" else "aiohttp")
    clients = [Listener(f"c{i}") for i in range(10)]
    successors: list[Listener] = []
    async with nodes(b, a):
        try:
            await asyncio.gather(*(client.connect(a.url) for client in clients))
            await b.post("/emit", {"tag": "before", "start": 0, "count": 3})
            await until(lambda: all(len(c.received) == 3 for c in clients), "before")
            assert a.process is not None
            a.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(a.process.wait(), EXIT_WITHIN)
            except TimeoutError:
                pytest.fail(f"{server} node still running {EXIT_WITHIN} s after SIGTERM")
            # uvicorn re-raises the signal once it has shut down gracefully
            assert a.process.returncode in (0, -signal.SIGTERM)
            await b.post("/emit", {"tag": "away", "start": 0, "count": 3})
            successors = await come_back(clients, b.url)
            for successor, old in zip(successors, clients, strict=True):
                assert (successor.recoveries, successor.sid) == (1, old.sid), \
                    f"{old.name}: a fresh session ({await b.connect_of(successor.sid or '')})"
            await b.post("/emit", {"tag": "after", "start": 0, "count": 2})
            expected = [*(("before", i) for i in range(3)), *(("away", i) for i in range(3)),
                        ("after", 0), ("after", 1)]
            await until(lambda: all(seen(s) == expected for s in successors),
                        lambda: "every missed event once, in order: "
                        + str([seen(s) for s in successors]))
        finally:
            await close_all(clients, successors)
