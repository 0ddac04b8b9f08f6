"""Helpers of the fault tests: nodes with a short lease, clients that act the moment
something arrives, and real store outages (a SQLite file locked by another process,
PostgreSQL refusing connections or holding a table lock, Redis paused).

Nothing here patches the library: each outage is something another process does to the
store, as it would happen in production.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio

import durable_adapter
from durable_adapter.migrate import migrate
from tests._harness import WAIT, settle_handlers
from tests._redis import REDIS_URL
from tests.cluster.conftest import ClusterStore
from tests.cluster.harness import NodeProcess
from tests.cluster.node_app import HANDOVER_TIMEOUT_ENV, LEASE_EXPIRY_ENV

LEASE_EXPIRY = 1.0  # seconds: a killed or frozen node's sessions are free after this
HANDOVER_TIMEOUT = 1.0  # seconds a reconnect waits for a silent owner before taking over


def node(name: str, store: ClusterStore, *args: str, lease: float = LEASE_EXPIRY,
         **options: Any) -> NodeProcess:
    """A node of ``store`` with a short lease and handover timeout."""
    return NodeProcess(name, store.url, args=(*store.args, *args),
                       env={LEASE_EXPIRY_ENV: str(lease),
                            HANDOVER_TIMEOUT_ENV: str(HANDOVER_TIMEOUT)}, **options)


@asynccontextmanager
async def running(*members: NodeProcess) -> AsyncIterator[None]:
    """Start the nodes one at a time (the first may create the schema); kill whatever is
    still running at the end (the tests stop what they mean to stop themselves)."""
    try:
        for member in members:
            await member.start()
        yield
    finally:
        await asyncio.gather(*(kill(member) for member in members))


async def kill(member: NodeProcess) -> None:
    process = member.process
    if process is None or process.returncode is not None:
        return
    with suppress(ProcessLookupError):
        process.send_signal(signal.SIGCONT)  # a stopped process cannot die of SIGKILL
        process.kill()
    await process.wait()


def pid_of(member: NodeProcess) -> int:
    assert member.process is not None
    return member.process.pid


async def exited_within(member: NodeProcess, seconds: float) -> float | None:
    """Seconds until ``member``'s process exited, or None if it still ran after
    ``seconds``."""
    assert member.process is not None
    started = time.monotonic()
    try:
        await asyncio.wait_for(member.process.wait(), seconds)
    except TimeoutError:
        return None
    return time.monotonic() - started


class Http:
    """One HTTP session for many control requests: a request that must be fast (an emit
    racing a kill) does not pay for a new connection."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Http:
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def post(self, url: str, path: str, body: dict[str, Any]) -> Any:
        assert self.session is not None
        async with self.session.post(url + path, json=body,
                                     timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
            response.raise_for_status()
            return await response.json()

    async def get(self, url: str, path: str) -> Any:
        assert self.session is not None
        async with self.session.get(url + path,
                                    timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
            response.raise_for_status()
            return await response.json()


async def flush(member: NodeProcess) -> bool:
    """Until the node's written-through sessions of what happened so far are stored (or
    their write failed); False when its writer was still busy after 5 s."""
    answer = await member.post("/op", {"op": "flush", "within": 5.0}, within=WAIT)
    return bool(answer.get("flushed", True))


async def counters(member: NodeProcess) -> dict[str, int]:
    """How often the node's refusing connect handlers ran (``GET /counters``)."""
    async with aiohttp.ClientSession() as http, http.get(
            member.url + "/counters", timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
        response.raise_for_status()
        found: dict[str, int] = await response.json()
        return found


async def emit(member: NodeProcess, tag: str, room: str, count: int = 1) -> None:
    await member.post("/emit", {"tag": tag, "start": 0, "count": count, "to": room},
                      within=WAIT)


@dataclass
class Peer:
    """A durable_adapter client on a websocket: the numbered ``seq`` events it received
    and a hook run synchronously as each arrives (e.g. to kill the node at once)."""

    auth: dict[str, Any] = field(default_factory=dict)
    client: durable_adapter.AsyncClient = field(
        default_factory=lambda: durable_adapter.AsyncClient(reconnection=False))
    received: list[tuple[str, int]] = field(default_factory=list)
    on_seq: Callable[[str, int], None] | None = None
    on_connect: Callable[[], None] | None = None
    #: the recovery state as it was right after the latest CONNECT reply
    state_at_connect: dict[str, Any] | None = None
    #: the sid of the latest connection, kept after it ends
    last_sid: str | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        @self.client.on("seq")
        def seq(payload: dict[str, Any]) -> None:
            self.received.append((payload["tag"], payload["i"]))
            self.arrived.set()
            if self.on_seq is not None:
                self.on_seq(payload["tag"], payload["i"])

        @self.client.on("connect")
        def connected() -> None:
            self.state_at_connect = self.client.recovery_state()
            self.last_sid = self.client.get_sid()
            if self.on_connect is not None:
                self.on_connect()

    @classmethod
    def successor(cls, old: Peer, **options: Any) -> Peer:
        """A new client carrying ``old``'s pid and offset, and what it received."""
        new = cls(**options)
        new.client.load_recovery_state(old.client.recovery_state())
        new.received = list(old.received)
        return new

    @property
    def sid(self) -> str:
        """The sid of the latest connection (also once it ended)."""
        assert self.last_sid is not None, "never connected"
        return self.last_sid

    async def connect(self, url: str) -> None:
        await asyncio.wait_for(self.client.connect(url, transports=["websocket"],
                                                   auth=self.auth, wait_timeout=WAIT), WAIT)

    async def receive(self, item: tuple[str, int], within: float = WAIT) -> bool:
        """Whether ``item`` arrives within ``within`` seconds."""
        deadline = time.monotonic() + within
        while item not in self.received:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)
        return True

    async def ended(self, within: float = WAIT) -> None:
        """Until the connection is down and the handlers of what it read have run."""
        await asyncio.wait_for(settle_handlers(self.client), within)

    async def closed_within(self, seconds: float) -> float | None:
        """Seconds until the server closed this connection, None if still open."""
        started = time.monotonic()
        reading = self.client.eio.read_loop_task
        if reading is not None:
            # not wait_for(eio.wait()): its timeout would cancel the read loop itself
            done, _ = await asyncio.wait({reading}, timeout=seconds)
            if not done:
                return None
        return time.monotonic() - started

    async def close(self) -> None:
        # a read loop cancelled earlier surfaces here as CancelledError: nothing to close
        with suppress(Exception, asyncio.CancelledError):
            if self.client.connected:
                await asyncio.wait_for(self.client.disconnect(), WAIT)
        with suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self.client.eio.disconnect(abort=True), WAIT)


async def close_all(*peers: Peer | None) -> None:
    await asyncio.gather(*(peer.close() for peer in peers if peer is not None))


async def eventually(check: Callable[[], Awaitable[bool]], within: float = WAIT) -> bool:
    """Whether the async ``check`` holds within ``within`` seconds (polled)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def until_time(moment: float) -> None:
    """Until ``time.monotonic()`` reaches ``moment``: for a fault that lasts a given time
    (a node frozen past its lease), not to wait for an effect."""
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


# -- store outages ---------------------------------------------------------------------

_SQLITE_LOCKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("ROLLBACK")
connection.close()
"""


class SqliteLock:
    """Another process holding ``BEGIN EXCLUSIVE`` on a SQLite file until released."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process: asyncio.subprocess.Process | None = None

    async def take(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SQLITE_LOCKER, str(self.path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 40)
        assert line.strip() == b"locked", "the lock holder could not lock the file"

    async def release(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        assert process.stdin is not None
        with suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(b"release\n")
            await process.stdin.drain()
        try:
            await asyncio.wait_for(process.wait(), WAIT)
        except TimeoutError:
            process.kill()
            await process.wait()


def sqlite_path(store: ClusterStore) -> Path:
    return Path(store.url.split(":///", 1)[1])


async def _pg_admin(statement: str) -> None:
    connection = await asyncpg.connect(database="postgres", timeout=WAIT)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@asynccontextmanager
async def postgres_database() -> AsyncIterator[ClusterStore]:
    """A fresh, migrated PostgreSQL database of its own: refusing its connections
    disturbs no other test."""
    name = f"t_{secrets.token_hex(6)}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+asyncpg:///{name}"
        await asyncio.wait_for(migrate(url), 60)
        yield ClusterStore("postgres", url)
    finally:
        await _pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_of(store: ClusterStore) -> str:
    return store.url.rsplit("/", 1)[1]


async def postgres_refuse(database: str) -> None:
    """PostgreSQL refuses new connections to ``database`` and drops the open ones."""
    await _pg_admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    await _pg_admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{database}' AND pid <> pg_backend_pid()")


async def postgres_accept(database: str) -> None:
    await _pg_admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


class PostgresTableLock:
    """A transaction of another connection holding ``ACCESS EXCLUSIVE`` on one table of
    a schema: every statement on that table waits, the rest of the database works."""

    def __init__(self, schema: str, table: str) -> None:
        self.schema, self.table = schema, table
        self.connection: asyncpg.Connection | None = None
        self.transaction: Any = None

    async def take(self) -> None:
        self.connection = await asyncpg.connect(timeout=WAIT)
        self.transaction = self.connection.transaction()
        await self.transaction.start()
        await self.connection.execute(
            f'LOCK TABLE "{self.schema}"."{self.table}" IN ACCESS EXCLUSIVE MODE')

    async def release(self) -> None:
        if self.connection is None:
            return
        connection, self.connection = self.connection, None
        with suppress(Exception):
            await self.transaction.rollback()
        await connection.close()


def schema_of(store: ClusterStore) -> str:
    assert store.args[:1] == ("--schema",), store
    return store.args[1]


def redis_admin() -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(REDIS_URL, socket_timeout=60)


async def redis_pause(milliseconds: int, mode: str = "ALL") -> None:
    """``CLIENT PAUSE``: every Redis client's commands (``mode`` WRITE: its writes) wait
    until it ends. Under ALL even ``CLIENT UNPAUSE`` waits: it ends by its timeout."""
    async with redis_admin() as admin:
        await admin.execute_command("CLIENT", "PAUSE", str(milliseconds), mode)


async def redis_unpause() -> None:
    async with redis_admin() as admin:
        await admin.execute_command("CLIENT", "UNPAUSE")
