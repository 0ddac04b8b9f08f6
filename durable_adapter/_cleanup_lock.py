"""The "one cleanup worker per database" lock.

* PostgreSQL: a session-level ``pg_try_advisory_lock`` held on a dedicated autocommit
  connection (outside any pool, no transaction left open). The lock lives as long as
  that connection: when the worker exits or its connection dies, PostgreSQL releases it
  and a standby worker takes it on its next try.
* SQLite: an exclusive ``flock`` on ``<database file>.cleanup.lock`` next to the
  database; the kernel releases it when the process exits. ``flock`` (not ``lockf``)
  also excludes a second worker in the same process.
* Redis: a key holding the holder's token, with a TTL
  (:mod:`durable_adapter.stores.redis.cleanup_lock`).
* Other stores: no lock (:class:`NoLock`); run one worker.

A store offers its lock as the optional ability ``cleanup_lock()``; :func:`lock_of`
asks it.

Usage::

    lock = lock_for(url, schema=None)
    if await lock.try_acquire():
        ...
        await lock.check()  # raises StoreError when the lock was lost
    await lock.release()
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from .exceptions import StoreError

try:
    import fcntl
except ImportError:  # Windows: no flock; the SQLite worker runs unlocked
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".cleanup.lock"


class WorkerLock(Protocol):
    """Held by at most one cleanup worker per database."""

    #: what is locked, for log messages
    description: str

    @property
    def held(self) -> bool: ...

    async def try_acquire(self) -> bool:
        """Take the lock if free; False when another worker holds it."""

    async def check(self) -> None:
        """Raise :class:`StoreError` if the lock was lost (its connection died)."""

    async def release(self) -> None:
        """Give the lock up (idempotent)."""


class NoLock:
    """For stores without a lock: the worker is always "active"."""

    description = "no lock (run a single cleanup worker for this store)"

    def __init__(self) -> None:
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    async def try_acquire(self) -> bool:
        self._held = True
        return True

    async def check(self) -> None:
        return None

    async def release(self) -> None:
        self._held = False


class FileLock:
    """An exclusive ``flock`` on a file (SQLite)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file lock {path}"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    async def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        if fcntl is None:
            self._fd = -1
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open the lock file {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {self.path}: {exc}") from exc
        self._fd = fd
        return True

    async def check(self) -> None:
        return None

    async def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and fd >= 0:
            os.close(fd)  # closing the only descriptor drops the flock


def advisory_key(schema: str | None) -> int:
    """A signed 64-bit key per schema, distinct from the migration lock's."""
    digest = hashlib.sha256(f"durable_adapter.cleanup:{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresAdvisoryLock:
    """``pg_try_advisory_lock`` on a dedicated connection, keyed by schema."""

    def __init__(self, url: URL, schema: str | None = None) -> None:
        self.url = url
        self.key = advisory_key(schema)
        where = url.render_as_string(hide_password=True)
        self.description = (f"advisory lock {self.key} on {where}"
                            + (f" (schema {schema})" if schema else ""))
        self._engine: AsyncEngine | None = None
        self._connection: AsyncConnection | None = None
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    async def _connect(self) -> AsyncConnection:
        if self._connection is None:
            if self._engine is None:
                self._engine = create_async_engine(self.url, poolclass=NullPool)
            connection = await self._engine.connect()
            self._connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        return self._connection

    async def _scalar(self, sql: str) -> Any:
        try:
            connection = await self._connect()
            return (await connection.exec_driver_sql(sql)).scalar()
        except (SQLAlchemyError, OSError) as exc:
            await self._drop_connection()
            raise StoreError(f"the cleanup lock's connection failed: {exc}") from exc

    async def try_acquire(self) -> bool:
        if self._held:
            return True
        self._held = bool(await self._scalar(f"SELECT pg_try_advisory_lock({self.key})"))
        return self._held

    async def check(self) -> None:
        if not self._held:
            raise StoreError("the cleanup lock is not held")
        await self._scalar("SELECT 1")  # a dead connection means the lock is gone

    async def _drop_connection(self) -> None:
        self._held = False
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close()
            except (SQLAlchemyError, OSError):
                pass  # already broken: the server released the lock with it

    async def release(self) -> None:
        if self._held and self._connection is not None:
            try:
                await self._connection.exec_driver_sql(f"SELECT pg_advisory_unlock({self.key})")
            except (SQLAlchemyError, OSError):
                pass  # closing the connection releases it as well
        await self._drop_connection()
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()


def lock_of(store: object) -> WorkerLock:
    """The lock of ``store`` (its ``cleanup_lock()``), or :class:`NoLock` if it has none."""
    make = getattr(store, "cleanup_lock", None)
    lock: WorkerLock = make() if callable(make) else NoLock()
    return lock


def lock_for(url: URL | None, schema: str | None = None) -> WorkerLock:
    """The lock for a SQL store at ``url`` (None: a store without a lock)."""
    if url is None:
        return NoLock()
    backend = url.get_backend_name()
    if backend == "postgresql":
        return PostgresAdvisoryLock(url, schema)
    if backend == "sqlite" and url.database:
        return FileLock(Path(url.database + LOCK_SUFFIX))
    return NoLock()
