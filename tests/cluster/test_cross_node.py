"""Operations on a socket held by another server process, through the store's control
messages: remote disconnect, rooms, ``call`` with the answer routed back, volatile emits.

Every operation is asked of node ``a`` for a client connected to node ``b``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from tests import _harness
from tests.cluster.conftest import ClusterStore
from tests.cluster.harness import Listener, NodeProcess, cluster

WAIT = 15.0  # seconds for one cross-node effect to show
until = functools.partial(_harness.until, within=WAIT)


def tags(listener: Listener) -> list[str]:
    return [tag for tag, _, _ in listener.received]


async def rooms_of(node: NodeProcess, sid: str) -> list[str]:
    async with aiohttp.ClientSession() as http, http.get(
            f"{node.url}/rooms/{sid}", timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
        response.raise_for_status()
        body = await response.json()
    return list(body["rooms"])


@asynccontextmanager
async def two_nodes(store: ClusterStore) -> AsyncIterator[tuple[NodeProcess, NodeProcess]]:
    async with cluster(store.url, 2, store.args) as (a, b):
        yield a, b


async def test_remote_disconnect_ends_the_session_for_good(cluster_store: ClusterStore) -> None:
    async with two_nodes(cluster_store) as (a, b):
        client = Listener("c")
        await client.connect(b.url)
        assert client.client is not None
        gone = asyncio.Event()
        client.client.on("disconnect", lambda *_: gone.set())
        await a.post("/emit", {"tag": "x", "start": 0, "count": 3})
        await until(lambda: len(client.received) == 3, "three events")
        sid, state = client.client.get_sid(), client.client.recovery_state()

        await a.post("/op", {"op": "disconnect", "sid": sid})
        await asyncio.wait_for(gone.wait(), WAIT)

        again = Listener("again")
        await again.connect(a.url, state)  # pid and offset as the official client sends
        assert again.refusals == 1 and again.client is not None
        assert again.client.get_sid() != sid
        await again.close()


async def test_enter_and_leave_a_room_of_a_remote_socket(cluster_store: ClusterStore) -> None:
    async with two_nodes(cluster_store) as (a, b):
        client = Listener("c")
        await client.connect(b.url)
        assert client.client is not None
        sid = client.client.get_sid()

        # no wait in between: the node applies the join before the emit that follows it
        await a.post("/op", {"op": "enter_room", "sid": sid, "room": "r"})
        await a.post("/emit", {"tag": "in-room", "start": 0, "count": 1, "to": "r"})
        await until(lambda: tags(client) == ["in-room"], "the room emit")
        assert "r" in await rooms_of(b, sid)

        await a.post("/op", {"op": "leave_room", "sid": sid, "room": "r"})
        await a.post("/emit", {"tag": "left", "start": 0, "count": 1, "to": "r"})
        await a.post("/emit", {"tag": "marker", "start": 0, "count": 1, "to": sid})
        await until(lambda: "marker" in tags(client), "the marker")
        assert tags(client) == ["in-room", "marker"]
        assert "r" not in await rooms_of(b, sid)
        await client.close()


async def test_close_room_reaches_sockets_on_every_node(cluster_store: ClusterStore) -> None:
    async with two_nodes(cluster_store) as (a, b):
        there, here = Listener("there", {"room": "c"}), Listener("here", {"room": "c"})
        await there.connect(b.url)
        await here.connect(a.url)
        await a.post("/emit", {"tag": "open", "start": 0, "count": 1, "to": "c"})
        await until(lambda: tags(there) == ["open"] == tags(here), "the room emit")

        await a.post("/op", {"op": "close_room", "room": "c"})
        await a.post("/emit", {"tag": "closed", "start": 0, "count": 1, "to": "c"})
        await a.post("/emit", {"tag": "marker", "start": 0, "count": 1})
        await until(lambda: "marker" in tags(there) and "marker" in tags(here), "the marker")
        assert tags(there) == tags(here) == ["open", "marker"]
        assert there.client is not None
        assert "c" not in await rooms_of(b, there.client.get_sid())
        await there.close()
        await here.close()


async def test_call_to_a_remote_socket_gets_its_answer(cluster_store: ClusterStore) -> None:
    async with two_nodes(cluster_store) as (a, b):
        client = Listener("c")
        await client.connect(b.url)
        assert client.client is not None

        def ask(data: Any) -> dict[str, Any]:
            return {"echo": data, "from": "client"}

        client.client.on("ask", ask)
        body = {"op": "call", "event": "ask", "data": 41, "sid": client.client.get_sid()}
        answer = await a.post("/op", body, within=WAIT)
        assert answer == {"answer": {"echo": 41, "from": "client"}}
        await client.close()


async def test_volatile_emits_reach_clients_on_other_nodes(cluster_store: ClusterStore) -> None:
    async with two_nodes(cluster_store) as (a, b):
        there, here = Listener("there"), Listener("here")
        await there.connect(b.url)
        await here.connect(a.url)
        got: dict[str, list[Any]] = {"there": [], "here": []}
        for listener in (there, here):
            assert listener.client is not None
            listener.client.on("vol", got[listener.name].append)
        assert there.client is not None

        # not a string: a client takes a trailing string argument for an offset
        await a.post("/op", {"op": "volatile", "event": "vol", "data": {"to": "sid"},
                             "to": there.client.get_sid()})
        await a.post("/op", {"op": "volatile", "event": "vol", "data": {"to": "all"}})
        await until(lambda: len(got["there"]) == 2 and len(got["here"]) == 1,
                    f"the volatile emits, got {got}")
        assert got == {"there": [{"to": "sid"}, {"to": "all"}], "here": [{"to": "all"}]}
        # volatile: no offset, nothing stored
        assert there.client.last_offset() is None
        await there.close()
        await here.close()
