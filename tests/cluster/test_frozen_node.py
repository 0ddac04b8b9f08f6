"""A node frozen (SIGSTOP) longer than its lease expiry, then thawed (SIGCONT).

While ``a`` is frozen its lease lapses, and a client of ``a`` reconnects to ``b``, which
takes the session over (the owner's lease expired) and the client joins another room
there. Once ``a`` runs again:

- it closes its stale socket of that sid promptly (the old connection sees its transport
  close within ``CLOSE_WITHIN`` s, long before any ping timeout), and never writes that
  session back: after the client moves on again, what it joined on ``b`` is still its
  session;
- a socket of ``a`` whose session nobody took stays open, receives what ``a`` emits to
  its room, and recovers on ``b`` after a drop.

``a`` pings every 5 s with a 20 s timeout: nothing here waits for a ping timeout.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from tests._harness import WAIT, drop_transport
from tests.cluster.conftest import ClusterStore
from tests.cluster.faults import (
    LEASE_EXPIRY,
    Peer,
    close_all,
    emit,
    flush,
    node,
    running,
    until_time,
)
from tests.cluster.harness import NodeProcess, released

FROZEN_FOR = 3.0  # seconds ``a`` is stopped: well past its lease expiry (1 s)
CLOSE_WITHIN = 4.0  # seconds after SIGCONT for ``a`` to close the stale socket
pytestmark = pytest.mark.timeout(90)


@dataclass
class Frozen:
    a: NodeProcess
    b: NodeProcess
    #: the client whose session moved to ``b`` while ``a`` was frozen: its old
    #: connection to ``a`` (never closed by the client) and its new one on ``b``
    moved_old: Peer
    moved_new: Peer
    #: a client of ``a`` that stayed where it was
    stayed: Peer
    thawed_at: float


async def drop_from(member: NodeProcess, peer: Peer) -> None:
    """``peer``'s transport drops; until ``member`` has stored its session."""
    await drop_transport(peer.client)
    await peer.ended()
    await released(member.url, peer.sid)


def _sqlite_writable(url: str) -> bool:
    """Whether another process can take the SQLite file's write lock now (not waiting)."""
    path = url.split(":///", 1)[1]
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:  # "database is locked"
        return False
    finally:
        connection.close()


async def freeze_outside_writes(member: NodeProcess, store: ClusterStore) -> None:
    """SIGSTOP ``member``, but not inside a SQLite write: a process stopped while holding
    the file's write lock stops every other writer (another fault, that SQLite cannot
    survive; its lease renewals write every third of a second, so a plain SIGSTOP lands in
    one now and then on a loaded machine). PostgreSQL and Redis need no care."""
    assert member.process is not None
    for _ in range(50):
        member.process.send_signal(signal.SIGSTOP)
        if store.kind != "sqlite" or _sqlite_writable(store.url):
            return
        member.process.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.05)  # let it finish its transaction, then try again
    raise AssertionError(f"{member.name} held the SQLite write lock at every try")


@asynccontextmanager
async def frozen_then_thawed(store: ClusterStore, *, drop_moved_while_frozen: bool = False
                             ) -> AsyncIterator[Frozen]:
    """Two clients on ``a`` (rooms "r-moved", "r-stayed"); ``a`` frozen; the first one's
    session taken to ``b`` after ``a``'s lease expired, where it joins "r-b" (and, with
    ``drop_moved_while_frozen``, drops: ``b`` stores it as a dropped session); ``a``
    thawed after ``FROZEN_FOR`` s."""
    a, b = node("a", store), node("b", store)
    moved_old = Peer(auth={"room": "r-moved"})
    stayed = Peer(auth={"room": "r-stayed"})
    moved_new: Peer | None = None
    async with running(b, a):
        try:
            await moved_old.connect(a.url)
            await stayed.connect(a.url)
            await flush(a)  # both sessions are in the store, as written through
            assert a.process is not None
            await freeze_outside_writes(a, store)
            frozen_at = time.monotonic()
            try:
                # the fault: a frozen past its lease (renewed every third of it)
                await until_time(frozen_at + LEASE_EXPIRY * 1.2)
                moved_new = Peer.successor(moved_old)
                await moved_new.connect(b.url)
                assert moved_new.client.is_recovered() and moved_new.sid == moved_old.sid, \
                    f"b did not take the session over: {await b.connect_of(moved_new.sid)}"
                assert await moved_new.client.call("join", {"room": "r-b", "data": {"on": "b"}},
                                                   timeout=WAIT) is True
                if drop_moved_while_frozen:
                    await drop_from(b, moved_new)
                # frozen FROZEN_FOR s at least (longer if the set-up above took longer)
                await until_time(frozen_at + FROZEN_FOR)
            finally:
                a.process.send_signal(signal.SIGCONT)
            yield Frozen(a, b, moved_old, moved_new, stayed, time.monotonic())
        finally:
            await close_all(moved_old, moved_new, stayed)


async def test_thawed_node_closes_the_socket_whose_session_moved(
        fault_store: ClusterStore) -> None:
    async with frozen_then_thawed(fault_store) as frozen:
        closed_in = await frozen.moved_old.closed_within(CLOSE_WITHIN)
        stale_held = await frozen.a.holds(frozen.moved_old.sid)
        assert closed_in is not None and not stale_held, (
            f"{CLOSE_WITHIN} s after SIGCONT, a still holds the socket whose session b "
            f"took (its connection open: {closed_in is None}): two live sockets, one sid")
        print(f"the stale socket closed {closed_in:.2f} s after SIGCONT")


async def test_thawed_node_keeps_the_socket_nobody_took(fault_store: ClusterStore) -> None:
    async with frozen_then_thawed(fault_store) as frozen:
        a, b, stayed = frozen.a, frozen.b, frozen.stayed
        # a has had its chance to look at its sockets once the moved one is closed (or
        # the time that takes at most has passed)
        await frozen.moved_old.closed_within(CLOSE_WITHIN)
        assert stayed.client.connected and await a.holds(stayed.sid), \
            "a closed a socket whose session nobody took"
        await emit(a, "to-stayed", "r-stayed")
        assert await stayed.receive(("to-stayed", 0)), "the kept socket gets nothing"
        await drop_transport(stayed.client)
        await stayed.ended()
        await released(a.url, stayed.sid)
        back = Peer.successor(stayed)
        try:
            await back.connect(b.url)
            assert back.client.is_recovered() and back.sid == stayed.sid, \
                f"a fresh session: {await b.connect_of(back.sid)}"
            await emit(b, "after", "r-stayed")
            assert await back.receive(("after", 0)), "recovered without its room"
        finally:
            await back.close()


@pytest.mark.parametrize("moved_dropped", ["while_frozen", "after_thaw"])
async def test_thawed_node_never_writes_back_a_session_it_lost(
        fault_store: ClusterStore, moved_dropped: str) -> None:
    """The moved client drops from ``b`` (``b`` stores its session, with "r-b"): while
    ``a`` is still frozen, or once ``a``, thawed, closed its stale socket (at most
    ``CLOSE_WITHIN`` s). Then the old connection to ``a``, if ``a`` left it open, drops
    too. The client recovering after that must still be in "r-b", with the data saved on
    ``b``: ``a`` wrote nothing of its stale copy, whatever the order."""
    async with frozen_then_thawed(
            fault_store, drop_moved_while_frozen=moved_dropped == "while_frozen") as frozen:
        a, b = frozen.a, frozen.b
        moved_new, moved_old = frozen.moved_new, frozen.moved_old
        sid = moved_new.sid
        if moved_dropped == "after_thaw":
            await moved_old.closed_within(CLOSE_WITHIN)
            await drop_from(b, moved_new)
        # a's stale socket ends now at the latest (a drop: a node saves a dropped session)
        if moved_old.client.eio.state == "connected":
            await drop_transport(moved_old.client)
        await moved_old.ended()
        await released(a.url, sid)
        back = Peer.successor(moved_new)
        try:
            await back.connect(b.url)
            assert back.client.is_recovered() and back.sid == sid, \
                f"a fresh session: {await b.connect_of(back.sid)}"
            await emit(b, "in-b", "r-b")
            await emit(b, "in-moved", "r-moved")
            got_b = await back.receive(("in-b", 0))
            got_moved = await back.receive(("in-moved", 0))
            assert got_b and got_moved, (
                f"the recovered session lost rooms (r-b: {got_b}, r-moved: {got_moved}): "
                "the thawed node wrote its stale copy back")
            assert await back.client.call("session", timeout=WAIT) == {"on": "b"}, \
                "the session data saved on b was overwritten"
        finally:
            await back.close()
