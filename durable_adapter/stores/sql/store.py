"""The SQL store: SQLAlchemy 2 Core, async; SQLite (aiosqlite) here, PostgreSQL by subclass.

Offsets come from one counter row: ``UPDATE counter SET top = top + n RETURNING top``
and the INSERT of the n packets share one transaction, so the row lock (on SQLite the
database write lock) makes seqs dense and in commit order. One writer task per store
batches the concurrent appends of this process into that transaction, written in one
round trip straight through the driver on a connection the writer keeps (:mod:`.append`).

Followers read ``seq > cursor`` from the table. This process's appends wake them at once;
other processes' are found by polling a cheap change marker (:meth:`SQLStore._change_marker`)
or, on PostgreSQL, rung in by NOTIFY (:mod:`.postgres`). Control messages between nodes
are rows the same writer puts in the same transactions (:mod:`.control`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import delete, select, tuple_
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..._tasks import STOP_TIMEOUT, finish_or_cancel
from ...exceptions import ConfigurationError, StoreError
from ..base import (
    HistoryBounds,
    HistoryResetListener,
    NewPacket,
    PacketListener,
    PurgeResult,
    Session,
    Store,
    StoredPacket,
    TakeRequest,
    TakeResult,
)
from ..batch_writer import BatchWriter
from ..delivery import decode_each, decode_or_refuse
from ..errors import driver_errors
from ..rules import check_new_packet, check_purge_args
from ..targets import TargetRange, targets_of
from . import append as appends
from . import control as controls
from . import dialect, leases, space, target_reads
from .follow import SQLFollower
from .migrate import schema_state, upgrade_engine
from .retention import purge_packets, purge_sessions
from .schema import (
    SINGLETON_ID,
    counter,
    meta,
    packet_from_row,
    packet_values,
    packets,
    sessions,
)

if TYPE_CHECKING:
    from ..._cleanup_lock import WorkerLock

logger = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

POLL_INTERVAL = 0.05  # seconds between change checks when nothing woke the follower
BATCH_MAX = 500  # packets per append transaction
DELETE_CHUNK = 400  # sockets per DELETE statement (SQLite binds at most 32766 values)
CLOSE_WAIT = 1.5  # seconds a closing store waits for its queries before abandoning them
#: seconds a purge leaves SQLite's write lock free between two batches. Another process
#: waiting for the lock sleeps in SQLite's busy handler and tries again 25 ms apart
#: (from 33 ms into its wait; 50 ms apart from 128 ms): a pause longer than that is
#: always seen by its next try, so an emit waits about one batch, not the whole pass.
SQLITE_PURGE_PAUSE = 0.03
VACUUM_STEP = 2048  # pages released per transaction by vacuum() (8 MiB of 4 KiB pages)
#: target ranges per statement (SQLite binds at most 32766 values, 4 per range)
TARGET_RANGES_MAX = 2000


def _seq_of(packet: StoredPacket) -> int:
    return packet.seq


def _shielded(
    method: Callable[Concatenate[SQLStore, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SQLStore, P], Coroutine[Any, Any, T]]:
    """Run the query in its own task: a cancelled caller leaves it to finish cleanly.

    Cancelling a task in the middle of a driver call can leave the connection torn
    (aiosqlite is then only stopped, not closed); :meth:`SQLStore.close` waits for these.
    """

    @functools.wraps(method)
    async def run(self: SQLStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        task = asyncio.ensure_future(method(self, *args, **kwargs))
        self._inflight.add(task)
        task.add_done_callback(_forget(self._inflight))
        return await asyncio.shield(task)

    return run


def _may_be_one_row(error: Exception) -> bool:
    """True when a failed append may come from one row's content rather than from the
    connection (then each row is written alone, so only the bad one fails)."""
    if isinstance(error, appends.ConnectionLost):
        return False
    cause = error.__cause__ if isinstance(error, StoreError) else error
    if isinstance(cause, OperationalError | InterfaceError | OSError | TimeoutError):
        return False  # a lost connection or a lock: writing again would not help
    return not (isinstance(cause, DBAPIError) and cause.connection_invalidated)


def _forget(inflight: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        inflight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the caller may be gone, the error is not news

    return done


class SQLStore(controls.SQLControl, Store):
    """Packets and sessions in SQL tables, shared by every node using the same database.

    :param url: a SQLAlchemy async URL (``sqlite+aiosqlite:///app.db``), or a ready
                :class:`AsyncEngine` (not SQLite), which the store never disposes.
    :param schema: PostgreSQL schema holding the tables.
    :param poll_interval: seconds between checks for other processes' appends.
    :param auto_migrate: create/upgrade the tables on :meth:`open`; default True on
                         SQLite, False elsewhere (run ``durable-adapter migrate``).
    :param batch_max: most packets written in one append transaction.

    Usage::

        async with SQLStore("sqlite+aiosqlite:///app.db") as store:
            seq = await store.append(NewPacket(namespace="/", data=["hi"]))

    :attr:`following` is set once the follower task runs.
    """

    shared = True  # every node, Emitter and cleanup worker on the same database
    #: seconds between two purge batches, in which other writers get the lock
    purge_pause: float = SQLITE_PURGE_PAUSE

    #: what :meth:`_errors` turns into :class:`StoreError` (the append path calls the
    #: driver itself, so its errors come unwrapped by SQLAlchemy)
    _driver_errors: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, sqlite3.Error)

    def __init__(
        self,
        url: str | AsyncEngine,
        *,
        schema: str | None = None,
        poll_interval: float = POLL_INTERVAL,
        auto_migrate: bool | None = None,
        batch_max: int = BATCH_MAX,
    ) -> None:
        if poll_interval <= 0:
            raise ConfigurationError(f"poll_interval must be > 0, got {poll_interval!r}")
        if batch_max < 1:
            raise ConfigurationError(f"batch_max must be >= 1, got {batch_max!r}")
        if schema is not None and not (isinstance(schema, str) and schema.isidentifier()):
            raise ConfigurationError(f"schema must be a plain identifier, got {schema!r}")
        self._given_engine = url if isinstance(url, AsyncEngine) else None
        self.url: URL = url.url if isinstance(url, AsyncEngine) else dialect.parse_url(url)
        if self._given_engine is not None and dialect.is_sqlite(self.url):
            raise ConfigurationError("pass SQLite as a URL: the store sets up its connections")
        if type(self) is SQLStore and not dialect.is_sqlite(self.url):
            # its append path is SQLite's own; PostgreSQL's is PostgresStore's
            raise ConfigurationError(
                f"SQLStore is for SQLite; for {self.url.get_backend_name()} use PostgresStore "
                "(or durable_adapter.stores.store_from_url)")
        self.schema = schema
        self.poll_interval = poll_interval
        self.batch_max = batch_max
        self.auto_migrate = dialect.is_sqlite(self.url) if auto_migrate is None else auto_migrate
        #: set while the follower task runs
        self.following = asyncio.Event()
        self._engine: AsyncEngine | None = None
        self._epoch: str | None = None
        # set after each commit of this process's appends (and by doorbells in subclasses)
        self._wakeup = asyncio.Event()
        self._writer: BatchWriter | None = None
        self._follower: SQLFollower | None = None
        self._follower_task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._delivered: Callable[[], int] | None = None
        self._writer_connection = appends.WriterConnection(
            lambda: self.engine, time.monotonic, self._driver_closed)
        self._sqlite_sql: appends.SQLiteStatements | None = None

    # -- lifecycle ---------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("the store is not open")
        return self._engine

    def _where(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def _create_engine(self) -> AsyncEngine:
        """The engine for :attr:`url`; dialect set-up lives in :mod:`.dialect`."""
        return dialect.create_engine(self.url, schema=self.schema)

    def _migrate_command(self) -> str:
        command = f"`durable-adapter migrate --store {self._where()}`"
        if self.schema:
            command += (" (in Python: durable_adapter.migrate.migrate(url, "
                        f"schema={self.schema!r}))")
        return command

    async def open(self) -> None:
        if self._engine is not None:
            return
        engine = self._given_engine or self._create_engine()
        try:
            with self._errors(f"cannot reach the store at {self._where()}"):
                async with engine.connect() as connection:
                    await connection.exec_driver_sql("SELECT 1")
            with self._errors(f"cannot migrate the store at {self._where()}"):
                state = await schema_state(engine, self.schema)
                problem = state.problem(self._where(), self._migrate_command())
                # a later release's schema is never touched; legacy ids are re-stamped
                # by an upgrade, and read as they are without one
                if problem is not None and (state.newer or not self.auto_migrate):
                    raise ConfigurationError(problem)
                if problem is not None or (state.legacy and self.auto_migrate):
                    await upgrade_engine(engine, self.schema)
            self._engine = engine
            self._epoch = await self._init_history()
        except BaseException:
            self._engine = None
            if self._given_engine is None:
                await engine.dispose()
            raise
        self._writer = BatchWriter(
            self._insert_batch,
            batch_max=self.batch_max,
            on_commit=self._committed,
            name=f"{self!r} writer",
            retry_alone=_may_be_one_row,
        )

    async def _init_history(self) -> str:
        """Create the counter row and the epoch once; return the epoch.

        A missing counter (tables emptied by hand) gets a fresh epoch with it, so offsets
        handed out before can never be misread as positions in the new history.
        """
        async with self._write() as connection:
            new_counter = dialect.insert_for(connection, counter).values(
                id=SINGLETON_ID, top=0, purged_through=0
            )
            created = await connection.execute(new_counter.on_conflict_do_nothing())
            if created.rowcount == 1:
                await connection.execute(delete(meta))
            new_epoch = dialect.insert_for(connection, meta).values(
                id=SINGLETON_ID, epoch=secrets.token_hex(8)
            )
            await connection.execute(new_epoch.on_conflict_do_nothing())
            epoch = (await connection.execute(select(meta.c.epoch))).scalar_one()
        return str(epoch)

    async def close(self) -> None:
        """Stop the follower and the writer, let queries under way finish, release the
        connections: within :data:`CLOSE_WAIT` seconds. Past that (a query stuck behind
        another process's lock on SQLite), the connections are abandoned: their queries
        fail, nothing waits for them, and the process can exit."""
        try:
            await asyncio.wait_for(self._close_cleanly(), CLOSE_WAIT)
        except TimeoutError:
            logger.warning("closing the store at %s did not finish within %.0f s: its "
                           "connections are abandoned", self._where(), CLOSE_WAIT)
            engine = self._engine
            if engine is not None:
                dialect.abandon_connections(engine)
            for task in list(self._inflight):
                task.cancel()
        engine, self._engine = self._engine, None
        if engine is not None and self._given_engine is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(engine.dispose(), CLOSE_WAIT)

    async def _close_cleanly(self) -> None:
        await self._stop_follower()
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.close()
        await self._writer_connection.release()
        if self._inflight:  # queries whose callers were cancelled: let them finish
            await asyncio.wait(self._inflight, timeout=STOP_TIMEOUT)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._where()}>"

    # -- connections and errors -------------------------------------------------

    def _errors(self, message: str) -> contextlib.AbstractContextManager[None]:
        """Driver errors become :class:`StoreError`, keeping the cause."""
        return driver_errors(message, *self._driver_errors)

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        with self._errors(f"reading the store at {self._where()} failed"):
            async with self.engine.connect() as connection:
                yield connection

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction (on SQLite it holds the write lock from its BEGIN)."""
        with self._errors(f"writing to the store at {self._where()} failed"):
            async with self.engine.connect() as connection:
                await connection.execution_options(**{dialect.WRITE_OPTION: True})
                async with connection.begin():
                    yield connection

    # -- packets ----------------------------------------------------------------

    async def append(self, packet: NewPacket) -> int:
        check_new_packet(packet)
        if self._writer is None:
            raise StoreError("the store is not open")
        # encoded here, so a payload that cannot be stored fails its own caller only
        values = packet_values(packet, self.codec)
        values[appends.TARGETS] = targets_of(packet.rooms)
        return await self._writer.submit(values)

    async def _insert_batch(self, rows: list[dict[str, Any]]) -> list[int]:
        batch = appends.split(rows)
        now = time.time()
        message = f"writing to the store at {self._where()} failed"
        with self._errors(message):
            top = await self._writer_connection.run(
                lambda driver: self._write_batch(driver, batch, now), self._lost, message)
        if batch.after:
            await self._maybe_prune_control(now)
        return batch.seqs(top)

    async def _write_batch(self, driver: Any, batch: appends.Batch, now: float) -> int:
        """The batch in one transaction on the driver's connection; returns the new top.

        SQLite: one call on the aiosqlite connection's thread (``_execute``, the hook
        aiosqlite's own methods use), not one thread hop per statement.
        """
        if self._sqlite_sql is None:
            self._sqlite_sql = appends.sqlite_statements(self.engine.dialect)
        db: sqlite3.Connection = driver._conn
        return int(await driver._execute(appends.sqlite_write, db, self._sqlite_sql,
                                         batch, now))

    def _lost(self, error: BaseException, driver: Any) -> bool:
        """Whether a failed write leaves the writer's connection unfit for the next one
        (or says nothing about the rows): a lock or I/O error, a closed connection, a
        cancel mid-call, a transaction a failed ROLLBACK left open."""
        if isinstance(error, asyncio.CancelledError | sqlite3.OperationalError
                      | sqlite3.InterfaceError | OSError | TimeoutError):
            return True
        try:
            return bool(driver.in_transaction)
        except (ValueError, sqlite3.Error):  # closed: "no active connection"
            return True

    def _driver_closed(self, driver: Any) -> bool:
        """Whether the writer's connection is known dead before use (SQLite: never)."""
        return False

    def _packet_from_row(self, row: Any) -> StoredPacket:
        return packet_from_row(row, self.codec)

    @_shielded
    async def read(
        self, *, after: int, limit: int, until: int | None = None, namespace: str | None = None
    ) -> list[StoredPacket]:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        query = select(packets).where(packets.c.seq > after).order_by(packets.c.seq).limit(limit)
        if until is not None:
            query = query.where(packets.c.seq <= until)
        if namespace is not None:
            query = query.where(packets.c.namespace == namespace)
        async with self._read() as connection:
            rows = (await connection.execute(query)).all()
        # a replay refuses rather than leave a silent hole
        return [decode_or_refuse(self._packet_from_row, row, row.seq) for row in rows]

    @_shielded
    async def read_targets(self, ranges: Sequence[TargetRange]) -> list[list[StoredPacket]]:
        answers: list[list[StoredPacket]] = [[] for _ in ranges]
        for start in range(0, len(ranges), TARGET_RANGES_MAX):
            chunk = ranges[start:start + TARGET_RANGES_MAX]
            async with self._read() as connection:
                rows = (await connection.execute(*self._target_query(chunk))).all()
            for row in rows:
                # a replay refuses rather than leave a silent hole
                answers[start + row.i - 1].append(
                    decode_or_refuse(self._packet_from_row, row, row.seq))
        for answer in answers:
            answer.sort(key=_seq_of)
        return answers

    def _target_query(self, ranges: Sequence[TargetRange]) -> tuple[Any, dict[str, Any]]:
        return target_reads.sqlite_query(self.engine.dialect, ranges)

    @_shielded
    async def _follow_page(self, *, after: int, limit: int
                           ) -> tuple[list[StoredPacket], int, bool]:
        """The follower's read: the packets after ``after`` that decode (a row that
        cannot is logged and skipped, never read again), the last seq read, and whether
        the page was full (more may follow at once)."""
        query = select(packets).where(packets.c.seq > after).order_by(packets.c.seq).limit(limit)
        async with self._read() as connection:
            rows = (await connection.execute(query)).all()
        return decode_each(self._packet_from_row, rows, lambda row: row.seq), \
            rows[-1].seq if rows else after, len(rows) >= limit

    @_shielded
    async def bounds(self) -> HistoryBounds:
        query = (
            select(meta.c.epoch, counter.c.top, counter.c.purged_through)
            .select_from(counter.join(meta, meta.c.id == counter.c.id))
            .where(counter.c.id == SINGLETON_ID)
        )
        async with self._read() as connection:
            row = (await connection.execute(query)).one()
        return HistoryBounds(epoch=row.epoch, top=row.top, purged_through=row.purged_through)

    # -- sessions ---------------------------------------------------------------

    @_shielded
    async def save_sessions(self, sessions_: Sequence[Session], *, node: str | None = None
                            ) -> None:
        """Every session in one transaction (one executemany)."""
        for session in sessions_:
            self.codec.check_session_data(session.data)
        if not sessions_:
            return
        async with self._write() as connection:
            await leases.upsert_sessions(connection, sessions_, node, self.codec)

    @_shielded
    async def take_sessions(self, requests: Sequence[TakeRequest], *, node: str, now: float,
                            window: float) -> list[TakeResult]:
        if not requests:
            return []
        async with self._write() as connection:
            return await leases.take_sessions(connection, requests, node=node, now=now,
                                              window=window, codec=self.codec)

    @_shielded
    async def owners(self, keys: Sequence[tuple[str, str]]
                     ) -> dict[tuple[str, str], str | None]:
        if not keys:
            return {}
        async with self._read() as connection:
            return await leases.read_owners(connection, keys)

    @_shielded
    async def renew_lease(self, node: str, *, now: float, expiry: float) -> None:
        async with self._write() as connection:
            await leases.renew_lease(connection, node, now + expiry)

    @_shielded
    async def record_window(self, node: str, seconds: float) -> None:
        """Note the ``max_disconnection_duration`` ``node`` serves, beside its lease (an
        optional ability: :func:`durable_adapter.cleanup.window_in_use` reads it)."""
        async with self._write() as connection:
            await leases.record_window(connection, node, seconds)

    @_shielded
    async def largest_window(self, now: float) -> float | None:
        """The largest ``max_disconnection_duration`` among the nodes alive at ``now``."""
        async with self._read() as connection:
            return await leases.largest_window(connection, now)

    @_shielded
    async def drop_lease(self, node: str) -> None:
        async with self._write() as connection:
            await leases.drop_lease(connection, node)

    @_shielded
    async def delete_sessions(self, sockets: Sequence[tuple[str, str]]) -> None:
        """Every socket's sessions in one transaction, a DELETE per chunk of sockets."""
        if not sockets:
            return
        async with self._write() as connection:
            for start in range(0, len(sockets), DELETE_CHUNK):
                chunk = sockets[start:start + DELETE_CHUNK]
                await connection.execute(delete(sessions).where(
                    tuple_(sessions.c.namespace, sessions.c.sid).in_(chunk)))

    # -- retention --------------------------------------------------------------

    async def purge(self, *, now: float, retention: float, batch_size: int = 1000) -> PurgeResult:
        check_purge_args(retention, batch_size)
        cutoff = now - retention
        removed_sessions = await self._in_batches(lambda: self._purge_sessions(now, batch_size))
        removed_sessions += await self._in_batches(
            lambda: self._purge_dead_owned(cutoff, batch_size))
        await self._purge_leases(cutoff)
        removed_packets = await self._in_batches(lambda: self._purge_packets(cutoff, batch_size))
        # live only: not counted
        await self._in_batches(lambda: self._prune_control(now, batch_size))
        bounds = await self.bounds()
        return PurgeResult(
            sessions=removed_sessions,
            packets=removed_packets,
            purged_through=bounds.purged_through,
        )

    def cleanup_lock(self) -> WorkerLock:
        """The lock keeping one purge active per database (an optional ability of a
        store, :func:`~durable_adapter._cleanup_lock.lock_of`): an advisory lock per
        schema (PostgreSQL), a ``flock`` beside the file (SQLite)."""
        from ..._cleanup_lock import lock_for

        return lock_for(self.url, self.schema)

    @_shielded
    async def vacuum(self) -> tuple[int, int]:
        """Give the space of deleted rows back to the file system: SQLite only (the
        file's size in bytes before and after). PostgreSQL's autovacuum makes that
        space reusable in place; see docs/operations.md for returning it.

        The first call on a file switches it to ``auto_vacuum = INCREMENTAL`` with one
        ``VACUUM``, which rewrites the file while holding the write lock (emits of other
        processes wait, up to the busy timeout): run it in a quiet moment. Later calls
        release free pages in steps of :data:`VACUUM_STEP` with pauses between them.
        """
        if not dialect.is_sqlite(self.url):
            raise ConfigurationError("vacuum returns space on SQLite only; on PostgreSQL "
                                     "autovacuum reuses it (see docs/operations.md)")
        with self._errors(f"vacuuming the store at {self._where()} failed"):
            async with self.engine.connect() as connection:
                raw = await connection.get_raw_connection()
                db: Any = raw.driver_connection  # autocommit: no BEGIN around VACUUM
                before = await space.file_bytes(db)
                await space.vacuum(db, VACUUM_STEP, self.purge_pause)
                return before, await space.file_bytes(db)

    async def _in_batches(self, batch: Callable[[], Awaitable[int]]) -> int:
        """Run ``batch`` until it removes nothing; the rows removed in total. Between
        two batches the write lock stays free for :attr:`purge_pause` seconds."""
        total = 0
        while (count := await batch()) > 0:
            total += count
            if self.purge_pause:
                await asyncio.sleep(self.purge_pause)
        return total

    @_shielded
    async def _purge_sessions(self, now: float, batch_size: int) -> int:
        async with self._write() as connection:
            return await purge_sessions(connection, now, batch_size)

    @_shielded
    async def _purge_dead_owned(self, cutoff: float, batch_size: int) -> int:
        async with self._write() as connection:
            return await leases.purge_dead_owned(connection, cutoff, batch_size)

    @_shielded
    async def _purge_leases(self, cutoff: float) -> int:
        async with self._write() as connection:
            return await leases.purge_leases(connection, cutoff)

    @_shielded
    async def _purge_packets(self, cutoff: float, batch_size: int) -> int:
        async with self._write() as connection:
            return await purge_packets(connection, cutoff, batch_size)

    # -- following --------------------------------------------------------------

    def _committed(self, numbers: list[int]) -> None:
        """This process committed rows: wake the follower, unless the node delivers them
        from memory (checked once the appending callers, resumed first, have done so)."""
        if self._delivered is None:
            self._wakeup.set()
        else:
            asyncio.get_running_loop().call_soon(self._wake_if_behind, max(numbers, default=0))

    def _wake_if_behind(self, top: int) -> None:
        # behind: a lower seq of another process came first, or a caller went away
        if self._delivered is None or self._delivered() < top:
            self._wakeup.set()

    async def follow(self, listener: PacketListener, *, after: int,
                     skip_delivered: Callable[[], int] | None = None,
                     on_reset: HistoryResetListener | None = None) -> None:
        # on_reset: a database's history is not replaced under running nodes
        if self._engine is None or self._writer is None:
            raise StoreError("the store is not open")
        await self._stop_follower()  # one follower per store: the new one replaces it
        self._delivered = skip_delivered
        control_cursor = await self._control_top()  # control messages are live only
        follower = self._follower = SQLFollower(
            engine=self.engine,
            read=self._follow_page,
            change_marker=self._change_marker,
            wakeup=self._wakeup,
            following=self.following,
            poll_interval=self.poll_interval,
            read_control=self._read_control,
            control_listener=self._handle_control,
            control_cursor=control_cursor,
            delivered=self._delivered,
        )
        self._follower_task = asyncio.create_task(
            follower.run(listener, after), name=f"{self!r} follower"
        )

    async def _stop_follower(self) -> None:
        # ask first, cancel only after STOP_TIMEOUT: a task cancelled mid-query can leave
        # its driver connection half-closed
        task, self._follower_task = self._follower_task, None
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        if task is not None:
            await finish_or_cancel(task, STOP_TIMEOUT)
        self.following.clear()

    async def _change_marker(self, connection: AsyncConnection) -> object:
        """A cheap value that changes when another process may have appended."""
        return await dialect.change_marker(connection)
