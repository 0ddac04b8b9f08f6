"""A client comes back on another node while its old socket there is still live.

Issue 11: sessions are written through, so node B finds the session at once; it is
owned by node A, which is alive, so B asks A (control channel) to close the old socket
and let go, then restores it. The old connection is what a half-open TCP path leaves
(the client moved networks); here a second client presenting the same state plays it,
which is the same thing from the servers' side. One process, two servers, one store.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from durable_adapter import RecoveryFailure
from durable_adapter.exceptions import StoreError
from durable_adapter.stores.base import OwnedBy, TakeRequest
from durable_adapter.stores.redis.store import RedisStore
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.postgres import PostgresStore
from tests._harness import WAIT, until
from tests._postgres import POSTGRES_URL, create_schema, drop_schema, run_sync
from tests._redis import REDIS_URL, redis_prefix
from tests.conformance.conftest import Peer, StoreMaker, running

ROUNDS = 3


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreMaker]:
    """A maker of stores that all open the same history (one per node)."""
    build: Callable[[], object]
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
        build = functools.partial(SQLStore, url, poll_interval=0.02)
        yield StoreMaker(build, lambda: None)  # type: ignore[arg-type]
    elif request.param == "postgres":
        schema = run_sync(create_schema())
        build = functools.partial(PostgresStore, POSTGRES_URL, schema=schema)
        yield StoreMaker(build, lambda: run_sync(drop_schema(schema)))  # type: ignore[arg-type]
    else:
        with redis_prefix() as prefix:
            build = functools.partial(RedisStore, REDIS_URL, prefix=prefix)
            yield StoreMaker(build, lambda: None)  # type: ignore[arg-type]


async def test_a_live_socket_on_another_node_is_handed_over(shared: StoreMaker) -> None:
    async with running(shared) as a, running(shared) as b:
        @a.sio.on("join")
        async def join(sid: str) -> None:
            await a.sio.enter_room(sid, "lobby")
            async with a.sio.session(sid) as session:
                session["name"] = "ada"

        old = Peer()
        await old.connect(a.url)
        sid = old.sid()
        await old.client.call("join", timeout=WAIT)
        await a.sio.emit("tick", "seen", to="lobby")
        await old.inbox["/"].wait_for(1)
        state = old.client.recovery_state()
        await a.sio.durable_manager.sessions.flush()
        await b.sio.emit("tick", "missed", to="lobby")  # the old path no longer carries it

        moved = Peer()
        await moved.connect(b.url, state)  # A still holds the old socket, open
        assert moved.client.is_recovered(), b.last["failure"]
        assert moved.sid() == sid
        await moved.inbox["/"].wait_for(1)
        assert moved.received() == ["missed"]
        # A closed the old socket: never two live sockets with one sid
        await until(lambda: not a.sio.manager.is_connected(sid, "/"), "A let the socket go")
        assert b.sio.manager.is_connected(sid, "/")
        assert "lobby" in b.sio.rooms(sid)
        assert (await b.sio.get_session(sid))["name"] == "ada"
        await b.sio.emit("tick", "after", to="lobby")
        await moved.inbox["/"].wait_for(2)
        assert moved.received() == ["missed", "after"]
        await old.close()
        await moved.close()


async def test_the_session_moves_back_and_forth_without_a_drop(shared: StoreMaker) -> None:
    async with running(shared) as a, running(shared) as b:
        peer = Peer()
        await peer.connect(a.url)
        sid = peer.sid()
        previous = [peer]
        for round_ in range(ROUNDS * 2):
            source, target = (a, b) if round_ % 2 == 0 else (b, a)
            await source.sio.emit("tick", round_)
            await previous[-1].inbox["/"].wait_for(1)
            state = previous[-1].client.recovery_state()
            await source.sio.durable_manager.sessions.flush()
            again = Peer()
            await again.connect(target.url, state)
            assert again.client.is_recovered(), target.last["failure"]
            assert again.sid() == sid
            await until(lambda src=source: not src.sio.manager.is_connected(sid, "/"),
                        "the old node let go")
            previous.append(again)
        for peer in previous:
            await peer.close()


async def test_a_silent_owner_is_taken_for_dead_after_the_handover_timeout(
        shared: StoreMaker) -> None:
    async with running(shared, handover_timeout=0.5) as a, \
            running(shared, handover_timeout=0.5) as b:
        old = Peer()
        await old.connect(a.url)
        sid = old.sid()
        state = old.client.recovery_state()
        await a.sio.durable_manager.sessions.flush()

        async def silent(namespace: str, pid_hash: str) -> None:
            await asyncio.Event().wait()  # a node whose loop is stuck never answers

        a.sio.durable_manager.let_go = silent  # type: ignore[method-assign]
        moved = Peer()
        await moved.connect(b.url, state)
        assert moved.client.is_recovered(), b.last["failure"]
        assert moved.sid() == sid
        pid_hash = b.sio.durable_manager.sockets.get("/", sid).pid_hash
        (taken,) = await b.sio.store.take_sessions(
            [TakeRequest("/", pid_hash)], node="someone else", now=0.0, window=0.0)
        assert taken == OwnedBy(b.sio.durable_manager.host_id)
        await old.close()
        await moved.close()


async def test_room_and_session_changes_are_written_through_from_any_node(
        shared: StoreMaker) -> None:
    """What a killed node leaves behind: its sockets' sessions as last changed, by itself
    or by another node through the cluster operations."""
    async with running(shared) as a, running(shared) as b:
        peer = Peer()
        await peer.connect(a.url)
        sid = peer.sid()
        pid_hash = a.sio.durable_manager.sockets.get("/", sid).pid_hash
        await b.sio.enter_room(sid, "vip")  # B asks A over the control channel
        await until(lambda: "vip" in a.sio.rooms(sid), "A to put the socket in the room")
        async with a.sio.session(sid) as session:
            session["cart"] = ["tea"]
        await a.sio.durable_manager.sessions.flush()
        # as another node finds it when A is taken for dead
        (taken,) = await b.sio.store.take_sessions(
            [TakeRequest("/", pid_hash, force_from=a.sio.durable_manager.host_id)],
            node="a node that outlived A", now=0.0, window=0.0)
        assert not isinstance(taken, OwnedBy) and taken is not None
        assert "vip" in taken.rooms and sid in taken.rooms
        assert taken.data == {"cart": ["tea"]}
        await peer.close()


async def test_a_node_back_from_a_lapsed_lease_closes_the_sockets_taken_meanwhile(
        shared: StoreMaker) -> None:
    async with running(shared) as a, running(shared) as b:
        old = Peer()
        await old.connect(a.url)
        sid = old.sid()
        state = old.client.recovery_state()
        await a.sio.durable_manager.sessions.flush()
        # A cannot reach the store for a while: its lease runs out
        lease = a.sio.durable_manager.lease
        await lease.stop(drop=False)
        await a.sio.store.renew_lease(lease.node, now=time.time() - 2, expiry=1)
        moved = Peer()
        await moved.connect(b.url, state)  # taken from a dead node: no handover asked
        assert moved.client.is_recovered(), b.last["failure"]
        assert a.sio.manager.is_connected(sid, "/")  # A has not noticed yet
        await a.sio._check_ownership()  # what A does once it renews again
        await until(lambda: not a.sio.manager.is_connected(sid, "/"), "A to close its socket")
        assert b.sio.manager.is_connected(sid, "/")
        assert len(a.sio.durable_manager.sockets) == 0
        await old.close()
        await moved.close()


async def test_a_store_failure_while_taking_a_dead_node_s_session_keeps_it(
        shared: StoreMaker) -> None:
    """Taken from a dead node, the session needs the history's top (the client's offset
    is judged against it): if that read fails, a refusal, and the session stays."""
    async with running(shared) as a, running(shared) as b:
        old = Peer()
        await old.connect(a.url)
        sid = old.sid()
        await a.sio.emit("tick", "seen")
        await old.inbox["/"].wait_for(1)
        state = old.client.recovery_state()
        await a.sio.durable_manager.sessions.flush()
        lease = a.sio.durable_manager.lease
        await lease.stop(drop=False)  # A dies without a word: its lease runs out
        await a.sio.store.renew_lease(lease.node, now=time.time() - 2, expiry=1)
        await b.sio.durable_manager.start()  # B is up (its first connect reads the top)
        # and has delivered the tick: with the top unreadable, B's delivered seq is all it
        # can vouch for, and a client ahead of it is refused by design (Restorer.put_back)
        seen = int(str(state["/"]["offset"]).rsplit("-", 1)[1])
        manager = b.sio.durable_manager
        await until(lambda: manager.delivered >= seen, "B delivered the tick", within=WAIT)
        bounds = b.sio.store.bounds

        async def failing() -> Any:
            raise StoreError("the store went away")

        b.sio.store.bounds = failing  # type: ignore[method-assign]
        refused = Peer()
        await refused.connect(b.url, state)
        assert not refused.client.is_recovered()
        assert b.last["failure"] is RecoveryFailure.STORE_UNAVAILABLE
        await refused.close()
        b.sio.store.bounds = bounds  # type: ignore[method-assign]
        again = Peer()
        await again.connect(b.url, state)
        assert again.client.is_recovered(), b.last["failure"]
        assert again.sid() == sid
        await old.close()
        await again.close()
