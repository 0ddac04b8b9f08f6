"""A node never acts on a session it no longer owns.

A lapse is judged by time: an event loop that stood still longer than the lease expiry
(here a handler blocking it, a real stall) renews without an error, and still it must
check. The check reads the owners without taking anything: a row another node took and
released (owner none) is not taken back, and the stale socket is closed, for real, and
never written over the newer state; a row that is absent (write-through off, or the
first write had not landed) leaves its socket alone.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from durable_adapter.stores.base import Session, TakeRequest
from tests._harness import WAIT, until
from tests.cluster.faults import (
    database_of,
    postgres_accept,
    postgres_database,
    postgres_refuse,
)
from tests.conformance.conftest import Peer, StoreMaker, running
from tests.conformance.test_live_handover import shared

__all__ = ["shared"]  # the fixture, parametrized over SQLite, PostgreSQL and Redis

LEASE = 0.6  # seconds


async def test_a_stalled_event_loop_is_a_lapse_and_is_checked(shared: StoreMaker) -> None:
    async with running(shared, lease_expiry=LEASE) as a:
        @a.sio.on("block")
        def block(sid: str) -> str:
            time.sleep(LEASE * 2)  # a synchronous handler holds the whole loop
            return "done"

        peer = Peer()
        await peer.connect(a.url)
        lease = a.sio.durable_manager.lease
        assert lease.lapses == 0
        assert await peer.client.call("block", timeout=WAIT) == "done"
        await until(lambda: lease.lapses == 1, "the stall to count as a lapse")
        # the check found the socket's row still its own: it stays
        assert a.sio.manager.is_connected(peer.sid(), "/")
        await peer.close()


async def test_a_session_released_elsewhere_is_not_taken_back_nor_overwritten(
        shared: StoreMaker) -> None:
    async with running(shared) as a, running(shared) as b:
        @b.sio.on("join")
        async def join(sid: str, room: str) -> None:
            await b.sio.enter_room(sid, room)

        old = Peer()
        await old.connect(a.url)
        sid = old.sid()
        pid_hash = a.sio.durable_manager.sockets.get("/", sid).pid_hash
        state = old.client.recovery_state()
        lease = a.sio.durable_manager.lease
        await lease.stop(drop=False)  # A is frozen: its lease runs out
        await a.sio.store.renew_lease(lease.node, now=time.time() - 2, expiry=1)
        moved = Peer()
        await moved.connect(b.url, state)  # taken from a dead node
        assert moved.client.is_recovered(), b.last["failure"]
        await moved.client.call("join", "joined-on-b", timeout=WAIT)
        await moved.drop(b)  # B saves it, owner none
        await a.sio._check_ownership()  # A renews again: is the row still its own?
        await until(lambda: not a.sio.manager.is_connected(sid, "/"), "A to close its socket")
        await until(lambda: not old.client.eio.state == "connected",
                    "the stale transport to really close")
        # A's stale socket wrote nothing over what B left
        (taken,) = await b.sio.store.take_sessions(
            [TakeRequest("/", pid_hash)], node="observer", now=time.time(), window=60)
        assert isinstance(taken, Session) and "joined-on-b" in taken.rooms
        await old.close()


@pytest.mark.parametrize("options", [{"write_through": False}], ids=["write-through-off"])
async def test_a_socket_without_a_row_stays_after_a_lapse(shared: StoreMaker,
                                                          options: dict[str, Any]) -> None:
    async with running(shared, **options) as a:
        peers = [Peer() for _ in range(3)]
        for peer in peers:
            await peer.connect(a.url)
        await a.sio._check_ownership()
        for peer in peers:
            assert a.sio.manager.is_connected(peer.sid(), "/")
            await peer.close()


async def test_the_check_after_a_lapse_outlives_a_store_outage(
        caplog: pytest.LogCaptureFixture) -> None:
    """A store that fails while the node checks its sessions does not end the check:
    once PostgreSQL (which refused every connection meanwhile) is back, the socket whose
    session moved on is closed."""
    async with postgres_database() as store, running(store.url) as a, \
            running(store.url) as b:
        old = Peer()
        await old.connect(a.url)
        sid = old.sid()
        state = old.client.recovery_state()
        lease = a.sio.durable_manager.lease
        await lease.stop(drop=False)  # A is frozen: its lease runs out
        await a.sio.store.renew_lease(lease.node, now=time.time() - 2, expiry=1)
        moved = Peer()
        await moved.connect(b.url, state)
        assert moved.client.is_recovered(), b.last["failure"]
        await postgres_refuse(database_of(store))
        try:
            lease._stop.clear()  # renewals stopped above; the check runs on its own
            lease._start_check()  # what A's next renewal after the lapse starts
            await until(lambda: "reading session owners failed" in caplog.text,
                        "the check to meet the outage")
            assert a.sio.manager.is_connected(sid, "/")
        finally:
            await postgres_accept(database_of(store))
        await until(lambda: not a.sio.manager.is_connected(sid, "/"),
                    "A to close its socket once the store is back")
        await old.close()
        await moved.close()
