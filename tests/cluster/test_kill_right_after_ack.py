"""SIGKILL of a node the moment its client has what the node acknowledged: the client
recovers on another node with everything the node confirmed before it died.

A client's ``join`` (an event with an ack) makes the handler enter a room and
``save_session``; once the ack is back, the node emits one event to that room, and the
client kills the node (SIGKILL, no settle time) from inside its handler of that event.
The client then reconnects to the surviving node on the same store and must be
recovered: same sid, still in the room (an emit there on the survivor reaches it), its
session data intact. Likewise for a node killed right after its CONNECT reply (the room
entered by the connect handler), and for one killed in the client's ack callback of
``join`` itself (no event). Repeated (``ROUNDS``), each with a new node to kill: a
session written only some milliseconds after the node confirmed it loses some rounds.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from typing import Any

import pytest

from tests._harness import WAIT
from tests.cluster.conftest import ClusterStore
from tests.cluster.faults import Http, Peer, close_all, kill, node, pid_of, running
from tests.cluster.harness import NodeProcess

ROUNDS = int(os.environ.get("DURABLE_ADAPTER_KILL_ROUNDS", "20"))  # rounds per store


def sigkill(member: NodeProcess) -> None:
    """SIGKILL at once, from inside a client handler (no await, no settle time)."""
    os.kill(pid_of(member), signal.SIGKILL)


async def recover(old: Peer, survivor: NodeProcess, http: Http, room: str
                  ) -> tuple[Peer, str | None]:
    """``old`` comes back on ``survivor``; returns the new client and what is wrong
    (None when it is recovered, with its sid, in ``room``)."""
    await old.ended()
    new = Peer.successor(old)
    await new.connect(survivor.url)
    if not new.client.is_recovered() or new.sid != old.sid:
        how = await http.get(survivor.url, f"/connects/{new.sid}")
        return new, f"a fresh session ({how})"
    await http.post(survivor.url, "/emit",
                    {"tag": "after", "start": 0, "count": 1, "to": room})
    if not await new.receive(("after", 0)):
        return new, f"recovered, but not in its room {room!r}"
    return new, None


async def kill_rounds(store: ClusterStore, one_round: Any) -> None:
    """Run ``ROUNDS`` rounds, each killing a new node while ``survivor`` stays up; fail
    with every round that lost something."""
    survivor = node("survivor", store)
    victim = node("victim-0", store)
    following: NodeProcess | None = None
    lost: list[str] = []
    started = time.monotonic()
    async with running(survivor), Http() as http:
        try:
            await victim.start()
            for number in range(ROUNDS):
                # the next victim starts while this round runs (a start takes a second)
                following = node(f"victim-{number + 1}", store) if number + 1 < ROUNDS \
                    else None
                starting = asyncio.create_task(following.start()) if following else None
                try:
                    problem = await asyncio.wait_for(
                        one_round(number, victim, survivor, http), 6 * WAIT)
                finally:
                    await kill(victim)
                    if starting is not None:
                        await starting
                if problem is not None:
                    lost.append(f"round {number}: {problem}")
                if following is not None:
                    victim, following = following, None
        finally:
            await kill(victim)
            if following is not None:
                await kill(following)
    took = time.monotonic() - started
    print(f"{ROUNDS} rounds in {took:.1f} s; {len(lost)} lost")
    assert not lost, f"{len(lost)} of {ROUNDS} rounds lost what the killed node " \
                     f"confirmed:\n" + "\n".join(lost)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("kill_after", ["ack", "event"])
async def test_sigkill_right_after_an_acked_join(fault_store: ClusterStore,
                                                kill_after: str) -> None:
    """``kill_after`` "ack": the client kills the node in its ack callback of ``join``
    (the ack confirms the room and the session data); "event": once the ack is back,
    the node emits one event to the room, and the client kills it in that event's
    handler (the event shows the room was in effect)."""
    async def one_round(number: int, victim: NodeProcess, survivor: NodeProcess,
                        http: Http) -> str | None:
        room = f"room-{number}"
        data = {"round": number, "token": secrets.token_hex(4)}
        peer = Peer()
        new: Peer | None = None
        try:
            await peer.connect(victim.url)
            if kill_after == "ack":
                acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

                def on_ack(*answer: Any) -> None:
                    sigkill(victim)
                    acked.set_result(answer)

                await peer.client.emit("join", {"room": room, "data": data},
                                       callback=on_ack)
                answer = await asyncio.wait_for(acked, WAIT)
                assert answer == (True,), f"join not acknowledged: {answer!r}"
            else:
                peer.on_seq = lambda tag, i: sigkill(victim) if tag == "before" else None
                acked_join = await peer.client.call("join", {"room": room, "data": data},
                                                    timeout=WAIT)
                assert acked_join is True, f"join not acknowledged: {acked_join!r}"
                # the answer is lost when the client kills the node first: not awaited
                emitting = asyncio.create_task(http.post(
                    victim.url, "/emit", {"tag": "before", "start": 0, "count": 1,
                                          "to": room}))
                assert await peer.receive(("before", 0)), "the event to the room never came"
            assert victim.process is not None
            await asyncio.wait_for(victim.process.wait(), WAIT)
            if kill_after == "event":
                await asyncio.gather(emitting, return_exceptions=True)
            new, problem = await recover(peer, survivor, http, room)
            if problem is not None:
                return problem
            session = await new.client.call("session", timeout=WAIT)
            if session != data:
                return f"recovered in its room, but its session is {session!r}, not {data!r}"
            return None
        finally:
            await close_all(peer, new)

    await kill_rounds(fault_store, one_round)


@pytest.mark.timeout(420)
async def test_sigkill_right_after_the_connect_reply(fault_store: ClusterStore) -> None:
    async def one_round(number: int, victim: NodeProcess, survivor: NodeProcess,
                        http: Http) -> str | None:
        room = f"room-{number}"
        peer = Peer(auth={"room": room})  # entered by the connect handler
        new: Peer | None = None
        try:
            peer.on_connect = lambda: sigkill(victim)
            await peer.connect(victim.url)
            assert victim.process is not None
            await asyncio.wait_for(victim.process.wait(), WAIT)
            new, problem = await recover(peer, survivor, http, room)
            return problem
        finally:
            await close_all(peer, new)

    await kill_rounds(fault_store, one_round)
