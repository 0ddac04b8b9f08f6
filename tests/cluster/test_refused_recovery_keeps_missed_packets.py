"""A recovery refused by the connect handler puts the session back as it was: the next
attempt is owed the same missed packets.

Node ``a`` is killed (SIGKILL) under a client; five events go to its room on ``b``
after the kill. The client reconnects to ``b``, whose connect handler refuses that first
attempt (auth ``refuse_once``); it reconnects again, is recovered, and gets all five,
once, in order. ``with_offset``: the client had received events through ``a`` before
the kill (and its session was written after them), so it presents an offset;
``no_offset``: it had received none.
"""

from __future__ import annotations

import secrets
import signal

import pytest
import socketio

from tests._harness import WAIT
from tests.cluster.conftest import ClusterStore
from tests.cluster.faults import Peer, close_all, counters, emit, flush, node, running

pytestmark = pytest.mark.timeout(90)
MISSED = 5


@pytest.mark.parametrize("offset", ["no_offset", "with_offset"])
async def test_refused_recovery_keeps_the_missed_packets(fault_store: ClusterStore,
                                                        offset: str) -> None:
    a, b = node("a", fault_store), node("b", fault_store)
    peer = Peer(auth={"room": "r"})
    refused: Peer | None = None
    back: Peer | None = None
    async with running(b, a):
        try:
            await peer.connect(a.url)
            if offset == "with_offset":
                await emit(a, "early", "r", count=2)
                assert await peer.receive(("early", 1))
                # a change after the deliveries: the session is written as of them
                assert await peer.client.call("join", {"room": "r-extra"},
                                              timeout=WAIT) is True
                assert peer.client.last_offset() is not None
            await flush(a)  # what the client did is in the store before the kill
            assert a.process is not None
            a.process.send_signal(signal.SIGKILL)
            await a.process.wait()
            await peer.ended()
            await emit(b, "missed", "r", count=MISSED)

            token = secrets.token_hex(4)
            refused = Peer.successor(peer, auth={"refuse_once": token})
            with pytest.raises(socketio.exceptions.ConnectionError):
                await refused.connect(b.url)
            assert (await counters(b))["refuse_once"] == 1, "refused by whom?"
            back = Peer.successor(peer, auth={"refuse_once": token})
            await back.connect(b.url)
            assert back.client.is_recovered() and back.sid == peer.sid, \
                f"the second attempt got a fresh session: {await b.connect_of(back.sid)}"
            before = list(peer.received)
            missed = [("missed", i) for i in range(MISSED)]
            await back.receive(missed[-1], within=WAIT)
            got = back.received[len(before):]
            assert got == missed, (
                f"the recovery after a refused one got {len(got)} of the {MISSED} missed "
                f"events: {got}")
            await emit(b, "after", "r")
            assert await back.receive(("after", 0)), "recovered without its room"
        finally:
            await close_all(peer, refused, back)
