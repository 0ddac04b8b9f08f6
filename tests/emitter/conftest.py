"""A real server on a SQL store, clients that record what they receive with its offset,
and the store's URL for emitters in this process or another."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import durable_adapter
from durable_adapter.stores.base import Store
from tests._harness import WAIT, Inbox, serving
from tests._postgres import POSTGRES_URL, postgres_schema
from tests._redis import redis_url


@dataclass
class Backend:
    """Where the server's store is: its URL, and its PostgreSQL schema if any."""

    name: str
    url: str
    schema: str | None = None

    def store(self) -> Store:
        if self.schema is None:
            return durable_adapter.store_from_url(self.url)
        from durable_adapter.stores.sql.postgres import PostgresStore

        # no polling to speak of: other writers' packets must ring the NOTIFY doorbell
        return PostgresStore(self.url, schema=self.schema, poll_interval=60)


@asynccontextmanager
async def make_backend(name: str, tmp_path: Path) -> AsyncIterator[Backend]:
    if name == "sqlite":
        yield Backend("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    elif name == "redis":
        yield Backend("redis", redis_url())
    else:
        async with postgres_schema() as schema:
            yield Backend("postgres", POSTGRES_URL, schema)


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The SQL stores: where transactional emit works."""
    async with make_backend(request.param, tmp_path) as backend:
        yield backend


@pytest.fixture
async def postgres() -> AsyncIterator[Backend]:
    async with postgres_schema() as schema:
        yield Backend("postgres", POSTGRES_URL, schema)


@dataclass
class Recorder:
    """A recovering client that records ``news`` events as (args, offset seq)."""

    inbox: Inbox = field(default_factory=Inbox)
    client: durable_adapter.AsyncClient = field(
        default_factory=lambda: durable_adapter.AsyncClient(reconnection=False))

    def __post_init__(self) -> None:
        @self.client.on("news")
        def news(*args: Any) -> None:
            offset = self.client.last_offset()
            assert offset is not None
            self.inbox.put((list(args), int(offset.rsplit("-", 1)[1])))

    async def connect(self, url: str, state: dict[str, Any] | None = None) -> None:
        if state:
            self.client.load_recovery_state(state)
        await self.client.connect(url, transports=["websocket"], wait_timeout=WAIT)

    @property
    def payloads(self) -> list[Any]:
        return [args[0] if len(args) == 1 else args for args, _ in self.inbox.items]

    @property
    def seqs(self) -> list[int]:
        return [seq for _, seq in self.inbox.items]


@pytest.fixture
async def server(backend: Backend) -> AsyncIterator[tuple[durable_adapter.AsyncServer, str]]:
    sio = durable_adapter.AsyncServer(
        store=backend.store(), async_mode="aiohttp",
        connection_state_recovery={"max_disconnection_duration": 60})

    @sio.on("join")
    async def join(sid: str, room: str) -> None:
        await sio.enter_room(sid, room)

    async with serving(sio) as url:
        yield sio, url


@pytest.fixture
async def recorder(server: tuple[durable_adapter.AsyncServer, str]
                   ) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    await recorder.connect(server[1])
    yield recorder
    await recorder.client.disconnect()
