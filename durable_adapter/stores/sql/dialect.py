"""Engine set-up and the few statements that differ between SQLite and PostgreSQL.

Kept apart from :mod:`.store` so the migrations (:mod:`.migrate`) build
their connections exactly as the store does, and so a dialect adds itself here rather
than by branching inside the store.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Table, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, InvalidRequestError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ...exceptions import ConfigurationError
from ..urls import normalize_store_url
from .schema import SINGLETON_ID, control, counter

#: Execution option marking a connection whose next transaction writes. On SQLite it
#: begins with ``BEGIN IMMEDIATE``: the write lock is taken up front, so offsets are
#: assigned under it and a read-then-write transaction can never deadlock.
WRITE_OPTION = "durable_adapter_write"

SQLITE_BUSY_TIMEOUT = 30_000  # milliseconds a writer waits for another process's lock
#: the aiosqlite connections each engine opened (see :func:`abandon_connections`)
_OPENED: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()


def parse_url(url: str | URL) -> URL:
    """``url`` as a SQLAlchemy URL with the async driver (``sqlite:///`` and
    ``postgres://`` are accepted, :func:`~..urls.normalize_store_url`), or
    :class:`ConfigurationError`."""
    if isinstance(url, str):
        url = normalize_store_url(url)
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"not a SQL store URL: {url!r}") from exc


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def create_engine(url: URL, *, schema: str | None = None,
                  pool_pre_ping: bool = False) -> AsyncEngine:
    """An async engine for ``url``, set up for the store (SQLite hooks, schema map)."""
    if schema is not None and is_sqlite(url):
        raise ConfigurationError("schema= is a PostgreSQL option; SQLite has no schemas")
    options: dict[str, Any] = {"pool_pre_ping": pool_pre_ping}
    if schema is not None:
        options["execution_options"] = {"schema_translate_map": {None: schema}}
    try:
        opened = None
        if is_sqlite(url) and url.get_driver_name() == "aiosqlite":
            options["async_creator"], opened = _aiosqlite_connector(url)
        engine = create_async_engine(url, **options)
        if opened is not None:
            _OPENED[engine.sync_engine] = opened
    except (ArgumentError, NoSuchModuleError, InvalidRequestError) as exc:
        # InvalidRequestError: a synchronous driver, which the async engine refuses
        raise ConfigurationError(
            f"cannot use {url.render_as_string(hide_password=True)!r}: {exc}") from exc
    except ImportError as exc:
        raise ConfigurationError(f"the {url.drivername} driver is not installed: {exc}") from exc
    if is_sqlite(url):
        _configure_sqlite(engine)
    return engine


def _aiosqlite_connector(url: URL
                         ) -> tuple[Callable[[], Awaitable[Any]], weakref.WeakSet[Any]]:
    """aiosqlite connections whose worker thread is a daemon.

    A query waiting for another process's lock blocks its thread for up to
    ``busy_timeout`` (30 s), and nothing interrupts that wait. A non-daemon thread keeps
    the interpreter from exiting until it returns, so a node told to stop during such an
    outage would outlive every bound its shutdown keeps. Abandoned at exit, a query
    that never got the lock leaves the file as it was (SQLite commits atomically).
    """
    args, kwargs = url.get_dialect(True)().create_connect_args(url)
    opened: weakref.WeakSet[Any] = weakref.WeakSet()

    async def connect() -> Any:
        import aiosqlite

        connection = aiosqlite.connect(*args, **kwargs)
        # aiosqlite >= 0.20 keeps its worker in ``_thread``; older ones are the thread
        worker: Any = getattr(connection, "_thread", connection)
        worker.daemon = True
        opened.add(connection)
        return await connection

    return connect, opened


def abandon_connections(engine: AsyncEngine) -> int:
    """Stop every aiosqlite connection of ``engine`` without waiting for it: a query
    blocked on another process's lock keeps its (daemon) thread, but every later call
    on the connection (a rollback in a cancelled task's cleanup, a close) fails at once
    instead of queueing behind it. For a store that must close now; returns how many."""
    opened = _OPENED.get(engine.sync_engine, ())
    stopped = 0
    for connection in list(opened):
        with contextlib.suppress(Exception):
            connection.stop()
            stopped += 1
    return stopped


def _configure_sqlite(engine: AsyncEngine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, emit BEGIN (the SQLAlchemy docs' recipe).

    The sqlite3 module (before Python 3.12's ``autocommit``) begins transactions only
    before DML, so DDL would autocommit and writes would take the lock late.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL itself waits for other processes
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT}")
            # WAL: readers never block the writer, several processes share one file
            cursor.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a commit survives a crash of the process (not of the
            # machine's power) without an fsync per commit
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def insert_for(engine: AsyncEngine | AsyncConnection | Connection, table: Table) -> Any:
    """An INSERT supporting ``on_conflict_do_nothing``/``on_conflict_do_update``.

    SQLite and PostgreSQL spell the same ``ON CONFLICT`` clause alike in SQLAlchemy.
    """
    name = engine.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise ConfigurationError(f"the SQL store does not support the {name} dialect")


async def change_marker(connection: AsyncConnection) -> object:
    """A cheap value that changes when another process may have appended.

    SQLite: ``PRAGMA data_version`` changes whenever any *other* connection commits, so
    it is read on a dedicated connection. Other dialects: the counter's top and the
    newest control id (a control message leaves the top as it is).
    """
    if connection.dialect.name == "sqlite":
        raw = await connection.get_raw_connection()
        # the aiosqlite connection itself: autocommit (isolation_level None), no BEGIN
        driver: Any = raw.driver_connection
        async with driver.execute("PRAGMA data_version") as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None
    async with connection.begin():
        top = select(counter.c.top).where(counter.c.id == SINGLETON_ID).scalar_subquery()
        newest = select(func.max(control.c.id)).scalar_subquery()
        return tuple((await connection.execute(select(top, newest))).one())
