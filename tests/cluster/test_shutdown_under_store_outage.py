"""SIGTERM of a node while its store is out: the shutdown is bounded, and what it could
not save stays recoverable.

The outages are real, made by another process: a SQLite file held by another process's
``BEGIN EXCLUSIVE``, a PostgreSQL database refusing connections (its open ones
terminated) or one table of the schema locked ``ACCESS EXCLUSIVE`` by another
transaction, Redis ``CLIENT PAUSE`` (ALL: every command waits; WRITE: every write).

- A node told to stop during an outage exits within ``EXIT_WITHIN`` s (a deployment's
  stop timeout is typically 10 to 30 s; past it the node is killed anyway).
- A node whose final save failed keeps its lease (its written-through sessions stay
  recoverable once it expired, as after a SIGKILL) instead of dropping it, which would
  make its live rows look like a clean shutdown's: unknown to the next node.

Redis ``CLIENT PAUSE`` stalls every client of the server: those tests are ``serial``.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path

import pytest

from tests.cluster.conftest import ClusterStore, open_cluster_store
from tests.cluster.faults import (
    Peer,
    PostgresTableLock,
    SqliteLock,
    close_all,
    database_of,
    emit,
    exited_within,
    flush,
    kill,
    node,
    postgres_accept,
    postgres_database,
    postgres_refuse,
    redis_pause,
    redis_unpause,
    running,
    schema_of,
    sqlite_path,
)
from tests.cluster.harness import NodeProcess

EXIT_WITHIN = 10.0  # seconds from SIGTERM to exit while the store is out
#: seconds the final save may take to give up before the node closes its sockets (the
#: recoverability test waits that long for the shutdown to get past its save)
SAVE_GIVES_UP_WITHIN = 35.0
EXIT_AFTER_OUTAGE = 30.0  # seconds for the stopping node to exit once the store is back
#: the whole pause of the exit test on Redis (ALL: even UNPAUSE waits for its end)
REDIS_PAUSE_MS = int((EXIT_WITHIN + 4) * 1000)

STORES = ["sqlite", "postgres", pytest.param("redis", marks=pytest.mark.serial)]


@asynccontextmanager
async def store_for(kind: str, tmp_path: Path, *, own_database: bool = False
                    ) -> AsyncIterator[ClusterStore]:
    """A store of ``kind``; on PostgreSQL with ``own_database`` a database of its own
    (refusing its connections disturbs no other test), else a schema of its own."""
    if kind == "postgres" and own_database:
        async with postgres_database() as store:
            yield store
        return
    async with open_cluster_store(kind, tmp_path) as store:
        yield store


@asynccontextmanager
async def refused(store: ClusterStore, outage: str) -> AsyncIterator[None]:
    """The store refuses service for the whole block (for the exit test)."""
    if outage == "postgres-locked":
        table = PostgresTableLock(schema_of(store), "durable_adapter_sessions")
        await table.take()
        try:
            yield
        finally:
            await table.release()
    elif store.kind == "sqlite":
        lock = SqliteLock(sqlite_path(store))
        await lock.take()
        try:
            yield
        finally:
            await lock.release()
    elif store.kind == "postgres":
        database = database_of(store)
        await postgres_refuse(database)
        try:
            yield
        finally:
            await postgres_accept(database)
    else:
        await redis_pause(REDIS_PAUSE_MS, "ALL")
        try:
            yield
        finally:
            await redis_unpause()  # waits for the pause to end by itself (ALL)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("outage", ["sqlite", "postgres-refusing", "postgres-locked",
                                    pytest.param("redis", marks=pytest.mark.serial)])
async def test_sigterm_during_a_store_outage_exits_promptly(outage: str, tmp_path: Path
                                                            ) -> None:
    """``postgres-refusing``: the database refuses connections, its open ones were
    terminated; ``postgres-locked``: the sessions table is locked by a transaction that
    does not end (the database answers everything else)."""
    kind = outage.split("-")[0]
    async with store_for(kind, tmp_path,
                         own_database=outage == "postgres-refusing") as store:
        a = node("a", store)
        peer = Peer(auth={"room": "r"})
        async with running(a):
            try:
                await peer.connect(a.url)
                await flush(a)
                async with refused(store, outage):
                    assert a.process is not None
                    a.process.send_signal(signal.SIGTERM)
                    took = await exited_within(a, EXIT_WITHIN)
                    if took is None:
                        await kill(a)  # before the outage ends: it must not finish late
                assert took is not None, \
                    f"still running {EXIT_WITHIN} s after SIGTERM, its store out ({outage})"
                print(f"exited {took:.2f} s after SIGTERM")
            finally:
                await close_all(peer)


class Outage:
    """An outage of ``store`` that lasts until :meth:`end`: SQLite locked by another
    process, the PostgreSQL sessions table locked (the leases table still works),
    Redis writes paused (renewed until the end)."""

    def __init__(self, store: ClusterStore) -> None:
        self.store = store
        self._stack = AsyncExitStack()
        self._renewing: asyncio.Task[None] | None = None

    async def begin(self) -> None:
        if self.store.kind == "sqlite":
            lock = SqliteLock(sqlite_path(self.store))
            await lock.take()
            self._stack.push_async_callback(lock.release)
        elif self.store.kind == "postgres":
            table = PostgresTableLock(schema_of(self.store), "durable_adapter_sessions")
            await table.take()
            self._stack.push_async_callback(table.release)
        else:
            await redis_pause(2000, "WRITE")
            self._renewing = asyncio.create_task(self._keep_paused())
            self._stack.push_async_callback(redis_unpause)

    async def _keep_paused(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await redis_pause(2000, "WRITE")

    async def end(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            # bounded: a pause no longer renewed ends by itself within its 2 s, and a
            # CLIENT PAUSE/UNPAUSE connection caught in it was seen to hang for minutes
            with suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._renewing, 5)
        try:
            await asyncio.wait_for(self._stack.aclose(), 5)
        except TimeoutError:
            if self.store.kind != "redis":
                raise


async def stopped_during_outage(how: int, a: NodeProcess, peer: Peer, outage: Outage
                                ) -> float | None:
    """Signal ``a`` (SIGTERM or SIGKILL) during the outage; end the outage once the
    node has closed the client's connection (its final save is behind it) or exited, at
    most ``SAVE_GIVES_UP_WITHIN`` s later; then wait for the exit. Returns the seconds
    until the connection closed, None if it did not within that time."""
    assert a.process is not None
    signalled = time.monotonic()
    a.process.send_signal(how)
    exiting = asyncio.ensure_future(a.process.wait())
    closing = asyncio.ensure_future(peer.closed_within(SAVE_GIVES_UP_WITHIN))
    try:
        await asyncio.wait({exiting, closing}, timeout=SAVE_GIVES_UP_WITHIN,
                           return_when=asyncio.FIRST_COMPLETED)
        ended = (closing.done() and closing.result() is not None) or exiting.done()
        closed = time.monotonic() - signalled if ended else None
    finally:
        await outage.end()
        closing.cancel()
    try:
        await asyncio.wait_for(exiting, EXIT_AFTER_OUTAGE)
    except TimeoutError:
        raise AssertionError(
            f"the node still ran {EXIT_AFTER_OUTAGE} s after the outage ended (its client's "
            f"connection closed {closed} s after the signal)") from None
    return closed


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_stopped_during_a_store_outage_its_client_recovers(
        kind: str, how: int, tmp_path: Path) -> None:
    """Its final save fails: the client must recover on ``b`` once the store is back,
    from the session written through before the outage (SIGKILL: the control)."""
    async with store_for(kind, tmp_path) as store:
        a, b = node("a", store), node("b", store)
        peer = Peer(auth={"room": "r"})
        back: Peer | None = None
        async with running(a):
            try:
                await peer.connect(a.url)
                await flush(a)  # the session is in the store before the outage
                outage = Outage(store)
                await outage.begin()
                closed = await stopped_during_outage(how, a, peer, outage)
                await peer.ended()
                async with running(b):
                    back = Peer.successor(peer)
                    await back.connect(b.url)
                    recovered = back.client.is_recovered() and back.sid == peer.sid
                    why = None if recovered else await b.connect_of(back.sid)
                    in_room = False
                    if recovered:
                        await emit(b, "after", "r")
                        in_room = await back.receive(("after", 0))
                assert closed is not None, (
                    f"the node neither closed its client nor exited within "
                    f"{SAVE_GIVES_UP_WITHIN} s of {signal.Signals(how).name} while the store "
                    f"was out (then the outage ended: recovered {recovered}, {why})")
                assert recovered, f"a fresh session after {signal.Signals(how).name} " \
                                  f"during the outage: {why}"
                assert in_room, "recovered without its room"
                print(f"connection closed {closed:.2f} s after {signal.Signals(how).name}")
            finally:
                await close_all(peer, back)
