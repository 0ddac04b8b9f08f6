"""Fixtures of the recovery conformance suite: every store runs the same tests.

A store joins the suite by adding one entry to ``STORE_FACTORIES``: given the test's
tmp_path, a store URL, or a :class:`StoreMaker` when a URL cannot say it all (the
PostgreSQL schema of the test): it builds a fresh store per server, as a restarted
process would, and is cleaned up after the test.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import durable_adapter
from durable_adapter.stores.base import Store
from tests._harness import WAIT, Inbox, drop_transport, serving
from tests._mongo import new_url as mongo_url
from tests._postgres import POSTGRES_URL, create_schema, drop_schema, run_sync
from tests._redis import redis_url


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'recovery.db'}"


class StoreMaker:
    """Builds a fresh store per call; :meth:`cleanup` runs after the test."""

    def __init__(self, build: Callable[[], Store], cleanup: Callable[[], None]) -> None:
        self.build, self.cleanup = build, cleanup

    def __call__(self) -> Store:
        return self.build()


StoreSpec = str | StoreMaker


def make_store(spec: StoreSpec) -> str | Store:
    """What ``AsyncServer(store=...)`` takes, from a store URL or maker."""
    return spec() if isinstance(spec, StoreMaker) else spec


def _postgres(_: Path) -> StoreMaker:
    from durable_adapter.stores.sql.postgres import PostgresStore

    schema = run_sync(create_schema())  # migrated: PostgresStore never migrates itself
    return StoreMaker(functools.partial(PostgresStore, POSTGRES_URL, schema=schema),
                      lambda: run_sync(drop_schema(schema)))


STORE_FACTORIES: dict[str, Callable[[Path], StoreSpec]] = {
    "memory": lambda _: "memory://",
    "sqlite": _sqlite_url,
    "postgres": _postgres,
    "redis": redis_url,  # a fresh key prefix per test, deleted at exit
    "mongo": mongo_url,  # a fresh database per test, dropped at exit
}


@pytest.fixture(params=list(STORE_FACTORIES))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreSpec]:
    if request.param == "sqlite" and importlib.util.find_spec("durable_adapter.stores.sql") is None:
        pytest.skip("the SQL store is not built yet")
    spec = STORE_FACTORIES[request.param](tmp_path)
    yield spec
    if isinstance(spec, StoreMaker):
        spec.cleanup()


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreSpec]:
    """The store named by ``parametrize("store", [...], indirect=True)``."""
    spec = STORE_FACTORIES[request.param](tmp_path)
    yield spec
    if isinstance(spec, StoreMaker):
        spec.cleanup()


class Node:
    """One server with a default connect handler that records what it saw."""

    def __init__(self, store: StoreSpec, **options: Any) -> None:
        recovery = {"max_disconnection_duration": 30, **options}
        self.sio = durable_adapter.AsyncServer(
            store=make_store(store), async_mode="aiohttp", connection_state_recovery=recovery,
            namespaces="*")
        self.store_url = store
        self.connects: list[dict[str, Any]] = []
        self.url = ""

        @self.sio.on("connect", namespace="*")
        async def connect(namespace: str, sid: str, environ: Any, auth: Any) -> None:
            self.connects.append({
                "sid": sid, "namespace": namespace, "auth": auth,
                "recovered": self.sio.is_recovered(sid, namespace),
                "failure": self.sio.recovery_failure(sid, namespace),
            })

    @property
    def last(self) -> dict[str, Any]:
        return self.connects[-1]

    async def wait_gone(self, sid: str, namespace: str = "/") -> None:
        """Until the server has processed the disconnect of ``sid`` (session saved)."""
        deadline = time.monotonic() + WAIT
        while self.sio.manager.is_connected(sid, namespace):
            assert time.monotonic() < deadline, f"{sid} still connected"
            await asyncio.sleep(0.01)


@asynccontextmanager
async def running(store: StoreSpec, **options: Any) -> AsyncIterator[Node]:
    node = Node(store, **options)
    async with serving(node.sio) as url:
        node.url = url
        yield node


class Peer:
    """A durable_adapter client that records events, and never reconnects by itself."""

    def __init__(self, events: tuple[str, ...] = ("tick",), namespaces: tuple[str, ...] = ("/",)
                 ) -> None:
        self.client = durable_adapter.AsyncClient(reconnection=False)
        self.inbox: dict[str, Inbox] = {ns: Inbox() for ns in namespaces}
        self.namespaces = list(namespaces)
        for namespace in namespaces:
            for event in events:
                self.client.on(event, self._recorder(event, namespace), namespace=namespace)

    def _recorder(self, event: str, namespace: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            self.inbox[namespace].put(args[0] if len(args) == 1 else args)
        return record

    def received(self, namespace: str = "/") -> list[Any]:
        return self.inbox[namespace].items

    async def connect(self, url: str, state: dict[str, Any] | None = None,
                      auth: Any = None, transport: str = "websocket",
                      wait_timeout: float = WAIT) -> None:
        if state:
            self.client.load_recovery_state(state)
        # python-socketio before 5.13 answers a refused CONNECT only when wait_timeout ends
        # (ConnectionError then); the outer bound must let that happen
        await asyncio.wait_for(self.client.connect(
            url, namespaces=self.namespaces, transports=[transport], auth=auth,
            wait_timeout=wait_timeout), wait_timeout + WAIT)

    def sid(self, namespace: str = "/") -> str:
        return self.client.get_sid(namespace)

    async def drop(self, node: Node) -> dict[str, Any]:
        """An abrupt transport close; returns the state a reconnect would send."""
        sids = {ns: self.sid(ns) for ns in self.namespaces}
        await drop_transport(self.client)
        for namespace, sid in sids.items():
            await node.wait_gone(sid, namespace)
        await self.close()
        return self.client.recovery_state()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.client.eio.disconnect(abort=True), WAIT)
        except Exception:
            pass


async def away_after_one(node: Node) -> tuple[str, dict[str, Any]]:
    """A client gets tick 1, drops, and misses tick 2: its sid, and the state it comes
    back with (owed exactly tick 2)."""
    peer = Peer()
    await peer.connect(node.url)
    await node.sio.emit("tick", 1)
    await peer.inbox["/"].wait_for(1)
    sid = peer.sid()
    state = await peer.drop(node)
    await node.sio.emit("tick", 2)
    return sid, state
