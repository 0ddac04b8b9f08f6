"""100 connections present one pid at once, on one node or spread over two (issue 11, bad
input): exactly one socket holds the sid afterwards, every other one got a fresh session
and the server says why (its RecoveryFailure). Never two live sockets with one sid.

Raw Engine.IO websockets (tests/_raw.py): each sends its CONNECT with the pid and offset as
the official client would, all at once, and records every frame it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import _harness
from tests._raw import RawSocket, payload
from tests.cluster.conftest import open_cluster_store
from tests.cluster.harness import Listener, NodeProcess, cluster, released

WAIT = 30.0
until = functools.partial(_harness.until, within=WAIT)
STORM = 100
pytestmark = pytest.mark.timeout(90)


class Reader:
    """A raw socket with a task reading every frame until the server closes it."""

    def __init__(self, raw: RawSocket) -> None:
        self.raw = raw
        self.closed = False
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(TimeoutError):
            while await self.raw.next_frame(within=3600) is not None:
                pass
        self.closed = True

    def reply(self) -> dict[str, Any] | None:
        """The CONNECT reply's payload (``sid``, ``pid``), None before it came."""
        for frame in self.raw.frames:
            if frame.startswith("40"):
                found: dict[str, Any] = payload(frame)
                return found
        return None

    def got(self, tag: str) -> bool:
        return any(frame.startswith("42") and json.loads(frame[2:])[1].get("tag") == tag
                   for frame in self.raw.frames)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        with contextlib.suppress(Exception):
            await self.raw.close()


@asynccontextmanager
async def storm(urls: list[str], auth: dict[str, Any]) -> AsyncIterator[list[Reader]]:
    """``STORM`` raw sockets, spread over ``urls``, opened first, then all CONNECT with
    ``auth`` at once; yields them once each got its CONNECT reply."""
    raws = await asyncio.gather(*(RawSocket.open(urls[i % len(urls)])
                                  for i in range(STORM)))
    readers = [Reader(raw) for raw in raws]
    try:
        await asyncio.gather(*(raw.send("40" + json.dumps(auth)) for raw in raws))
        await until(lambda: all(r.reply() is not None or r.closed for r in readers),
                    "every CONNECT reply")
        yield readers
    finally:
        await asyncio.gather(*(reader.close() for reader in readers))


async def session_on(node: NodeProcess, live: bool) -> tuple[Listener, dict[str, Any]]:
    """A client of ``node`` that got two events; its pid and offset as a CONNECT auth.
    ``live``: its connection stays open (the node holds the session), else it is dropped
    and its session stored."""
    client = Listener("owner")
    await client.connect(node.url)
    await node.post("/emit", {"tag": "seen", "start": 0, "count": 2})
    await until(lambda: len(client.received) == 2, "two events")
    assert client.client is not None and client.sid is not None
    if not live:
        await _harness.drop_transport(client.client)
        await _harness.settle_handlers(client.client)
        await released(node.url, client.sid)
    state = client.client.recovery_state()["/"]
    return client, {"pid": state["pid"], "offset": state["offset"]}


async def check_one_winner(readers: list[Reader], owner: Listener, nodes: list[NodeProcess]
                           ) -> None:
    """Exactly one reader holds the owner's sid: it alone gets an event sent to the sid,
    and one node alone holds it. Every other reader has a fresh sid with a reason, or got
    the sid and was closed by the server (taken over by a later one: the rule for a
    presenter of a live session's pid, which is the same as losing). The owner lost it."""
    sid, client = owner.sid, owner.client
    assert sid is not None and client is not None

    def holders() -> list[Reader]:
        return [r for r in readers
                if not r.closed and (r.reply() or {}).get("sid") == sid]

    assert any((r.reply() or {}).get("sid") == sid for r in readers), \
        "nobody got the session back"
    # takeovers close the sockets they replace after their CONNECT reply: until settled
    await until(lambda: len(holders()) <= 1 and not client.connected,
                lambda: f"{len(holders())} open sockets with the sid, owner connected: "
                f"{client.connected}")
    assert len(holders()) == 1, "the last holder was closed too"
    (winner,) = holders()
    await nodes[0].post("/emit", {"tag": "probe", "start": 0, "count": 1, "to": sid})
    await until(lambda: winner.got("probe"), "the winner to get an event to its sid")
    # a marker to everyone after the probe: each socket gets them in that order, so once
    # every other one has the marker, any second holder would have the probe too
    await nodes[0].post("/emit", {"tag": "marker", "start": 0, "count": 1})
    others = [r for r in readers if r is not winner and not r.closed]
    await until(lambda: all(r.got("marker") for r in others), "the marker everywhere")
    assert [r for r in others if r.got("probe")] == [], "two sockets hold one sid"
    holding = [n.name for n in nodes if await n.holds(sid)]
    assert len(holding) == 1, f"held on {holding}"
    for reader in others:
        reply = reader.reply()
        assert reply is not None and reply["sid"] != sid
        found = [c for c in [await n.connect_of(reply["sid"]) for n in nodes] if c]
        assert found and found[0]["failure"], f"a fresh session without a reason: {found}"


# where the storm goes: the owner's node, both nodes, or only the node not holding it
CASES = [
    *(pytest.param("memory", "same", live, id=f"memory-same-{'live' if live else 'stored'}")
      for live in (False, True)),
    *(pytest.param(kind, spread, live, id=f"{kind}-{spread}-{'live' if live else 'stored'}")
      for kind in ("sqlite", "postgres", "redis")
      for spread, live in (("both", False), ("other", True))),
]


@pytest.mark.parametrize(("kind", "spread", "live"), CASES)
async def test_100_reconnects_with_one_pid(kind: str, spread: str, live: bool,
                                           tmp_path: Path) -> None:
    """The owner's session is stored (it dropped) or still live on its node; then 100
    connections present its pid and offset at once: to that node, to both, or to the
    other one only (which must have it handed over)."""
    async with open_cluster_store(kind, tmp_path) as store, \
            cluster(store.url, 1 if spread == "same" else 2, store.args) as nodes:
        owner, auth = await session_on(nodes[0], live)
        targets = {"same": nodes[:1], "both": nodes, "other": nodes[1:]}[spread]
        try:
            async with storm([n.url for n in targets], auth) as readers:
                await check_one_winner(readers, owner, nodes)
        finally:
            await owner.close()


