"""Half-open: the client's network changed, its old TCP connection to node ``a`` is silent
but not closed (a frozen proxy in between: ``a`` sees neither data nor a close), and it
reconnects, to ``a`` again or to another node ``b`` on the same store (issue 11).

It must recover on that first reconnect, with its sid and every event emitted meanwhile
once, in order, and without waiting for ``a`` to notice (ping interval + timeout are 25 s
there, far above every wait here); the old socket is closed: never two live sockets with
one sid. Run with our Python client and with the official JS client (socket.io-client 4.8).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import _harness
from tests._proxy import Link, Proxy
from tests.cluster.conftest import open_cluster_store
from tests.cluster.harness import Listener, NodeProcess, cluster
from tests.interop.conftest import js_client_installed  # noqa: F401  (a fixture)
from tests.interop.jsclient import JsClient, js_client

WAIT = 15.0  # seconds for one cross-node effect to show
until = functools.partial(_harness.until, within=WAIT)
pytestmark = pytest.mark.timeout(90)

# where the client reconnects; the memory store has one node, so "same" only
CASES = [pytest.param(store, where, id=f"{store}-{where}")
         for store in ("memory", "sqlite", "postgres", "redis")
         for where in ("same", "other") if (store, where) != ("memory", "other")]


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Until the async ``check`` holds, at most WAIT seconds."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def nodes_and_proxy(kind: str, tmp_path: Path
                          ) -> AsyncIterator[tuple[NodeProcess, NodeProcess, Proxy]]:
    """Node ``a`` behind a proxy, and the node the client reconnects to (``a`` itself on
    the memory store, which cannot be shared)."""
    async with open_cluster_store(kind, tmp_path) as store, \
            cluster(store.url, 1 if kind == "memory" else 2, store.args) as nodes, \
            Proxy(nodes[0].port) as proxy:
        yield nodes[0], nodes[-1], proxy


async def old_sockets_closed(links: list[Link], a: NodeProcess, b: NodeProcess,
                             sids: list[str]) -> None:
    """The node closed the frozen sockets (the proxy read their close) and only the node
    the clients reconnected to holds their sids."""
    for link in links:
        await link.until(lambda lk: lk.down.ended, within=WAIT)
    if a is not b:
        for sid in sids:
            assert await b.holds(sid)
            await eventually(functools.partial(released_by, a, sid),
                             f"{a.name} to release {sid}")


async def released_by(node: NodeProcess, sid: str) -> bool:
    return not await node.holds(sid)


def seq_events(client: JsClient) -> list[tuple[str, int]]:
    return [(line["args"][0]["tag"], line["args"][0]["i"]) for line in client.events("seq")]


EXPECTED = [*(("missed", i) for i in range(3)), ("after", 0), ("after", 1)]


@pytest.mark.parametrize(("kind", "where"), CASES)
async def test_clients_recover_on_the_first_reconnect_after_a_half_open_drop(
        kind: str, where: str, tmp_path: Path, js_client_installed: Any) -> None:  # noqa: F811
    """Our Python client and the official JS client, each on its own link through the
    proxy to ``a``. Both links are cut on the client's side (the client sees its
    connection fail, ``a`` sees silence), then each reconnects to ``a`` again or to
    ``b``: the JS client to the address it knows (the proxy, as a load balancer, sends
    new connections to the target), ours to the target directly."""
    async with nodes_and_proxy(kind, tmp_path) as (a, b, proxy), \
            js_client(proxy.url, reconnection=False) as js:
        target = a if where == "same" else b
        py, again = Listener("py"), Listener("again")
        try:
            await py.connect(proxy.url)
            first = await js.wait_connects(1)
            links = list(await proxy.wait_links(2))
            assert py.sid is not None and py.client is not None
            await b.post("/emit", {"tag": "seen", "start": 0, "count": 3})
            await until(lambda: len(py.received) == 3 == len(js.events("seq")),
                        "the three events before the drop")
            proxy.freeze()
            await b.post("/emit", {"tag": "missed", "start": 0, "count": 3})
            proxy.upstream = target.port
            mark = js.mark()
            for link in links:
                link.cut_client()  # each client's connection fails; a sees nothing of it
            await _harness.settle_handlers(py.client)
            await js.wait_line("disconnect", mark)
            assert await a.holds(py.sid) and await a.holds(first["id"]), \
                "the proxy let a close through"

            await js.send("connect")
            await again.connect(target.url, py.client.recovery_state())
            second = await js.wait_connects(2)
            assert (again.recoveries, again.sid) == (1, py.sid), \
                "Python client: a fresh session, the old socket still held it"
            assert (second["recovered"], second["id"]) == (True, first["id"]), \
                "JS client: a fresh session, the old socket still held it"
            await target.post("/emit", {"tag": "after", "start": 0, "count": 2})
            await until(lambda: len(again.received) == 5, "the Python client's events")
            await js.wait_events(8, "seq")
            assert [(t, i) for t, i, _ in again.received] == EXPECTED
            assert seq_events(js) == [*(("seen", i) for i in range(3)), *EXPECTED]
            await old_sockets_closed(links, a, target, [py.sid, first["id"]])
        finally:
            await again.close()
            await py.close()


async def test_frozen_proxy_leaves_the_node_holding_a_silent_socket() -> None:
    """What the test above stands on: behind a frozen proxy the node keeps the socket
    (no close reached it) and the client gets nothing more."""
    async with cluster("memory://", 1) as (a,), Proxy(a.port) as proxy:
        old = Listener("old")
        await old.connect(proxy.url)
        assert old.client is not None and old.sid is not None
        (link,) = await proxy.wait_links(1)
        link.freeze()
        await a.post("/emit", {"tag": "held", "start": 0, "count": 2})
        # the node wrote both to the socket: the proxy has them, the client does not
        await link.until(lambda lk: lk.down.held.count(b"held") == 2)
        assert old.received == []
        link.cut_client()
        await asyncio.wait_for(old.client.eio.wait(), WAIT)  # the client saw it fail
        sid = old.sid
        assert await a.holds(sid)
        assert not link.down.ended  # and the node has not closed it either
        await proxy.close()  # now a sees the close, and saves the session
        await eventually(functools.partial(released_by, a, sid), "a to notice the close")

