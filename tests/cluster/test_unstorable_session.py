"""A session the store cannot hold (a ``datetime``, which JSON cannot encode, as
python-socketio's default ``json`` cannot either) fails its own socket only.

- ``save_session`` with such data raises a clear error to the handler that called it
  (it cannot be recovered later: saying so at once is the only honest answer);
- another client of the same node still has its room join and session data written:
  after a drop (or a SIGKILL of the node) it recovers on another node with both.
"""

from __future__ import annotations

import signal

import pytest

from tests._harness import WAIT, drop_transport
from tests.cluster.conftest import ClusterStore
from tests.cluster.faults import Peer, close_all, emit, flush, node, running
from tests.cluster.harness import released

pytestmark = pytest.mark.timeout(90)


async def test_save_session_with_unstorable_data_raises(fault_store: ClusterStore) -> None:
    a = node("a", fault_store)
    peer = Peer()
    async with running(a):
        try:
            await peer.connect(a.url)
            answer = await peer.client.call("save_bad", timeout=WAIT)
            assert answer["saved"] is False, (
                "save_session accepted a session holding a datetime, which the store "
                f"cannot hold: {answer}")
            error = answer["error"]
            assert any(word in error.lower() for word in ("datetime", "json")), \
                f"the error does not say what is wrong: {error!r}"
            print(f"save_session raised {error}")
        finally:
            await close_all(peer)


@pytest.mark.parametrize("how", ["drop", "sigkill"])
async def test_an_unstorable_session_fails_only_its_own_socket(
        fault_store: ClusterStore, how: str) -> None:
    """Client 1 saves a datetime; client 2 (same node) then joins a room and saves its
    data; client 2 drops (``drop``) or the node is killed (``sigkill``, after the node
    wrote what it could): client 2 recovers on ``b`` in its room, with its data."""
    a, b = node("a", fault_store), node("b", fault_store)
    bad, good = Peer(), Peer()
    back: Peer | None = None
    async with running(b, a):
        try:
            await bad.connect(a.url)
            await good.connect(a.url)
            await flush(a)
            await bad.client.call("save_bad", timeout=WAIT)  # whatever it answers
            assert await good.client.call("join", {"room": "r2", "data": {"good": 2}},
                                          timeout=WAIT) is True
            if how == "drop":
                await drop_transport(good.client)
                await good.ended()
                await released(a.url, good.sid)
            else:
                await flush(a)
                assert a.process is not None
                a.process.send_signal(signal.SIGKILL)
                await a.process.wait()
                await good.ended()
            back = Peer.successor(good)
            await back.connect(b.url)
            assert back.client.is_recovered() and back.sid == good.sid, \
                f"client 2 got a fresh session: {await b.connect_of(back.sid)}"
            await emit(b, "after", "r2")
            assert await back.receive(("after", 0)), "client 2 recovered without its room"
            assert await back.client.call("session", timeout=WAIT) == {"good": 2}, \
                "client 2 recovered without its session data"
        finally:
            await close_all(bad, good, back)
