"""The PostgreSQL store: the SQL store's tables and follower, plus a LISTEN/NOTIFY doorbell.

Ordering needs nothing PostgreSQL-specific beyond what :mod:`.sql` does: offsets come
from one counter row updated in the append transaction, so they are dense and in commit
order, and each node reads ``seq > cursor`` from the table. What this module adds is
latency: the append (or control) transaction sends ``NOTIFY`` on a channel named after
the schema, and every node LISTENs on a dedicated connection outside the pool and wakes
its follower when the bell rings.

The bell carries no data but the ringing store's token (its own listener ignores its
own commits, which it has seen already), on purpose: NOTIFY payloads are capped near 8000 bytes,
identical ones coalesce within a transaction, and a listener connection that drops
loses whatever was sent meanwhile. None of that matters to a doorbell: after every
(re)connect the follower reads from its cursor, and it checks the top every
``poll_interval`` seconds anyway, so a lost bell costs latency, never a packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
from sqlalchemy import TextClause
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from ..._tasks import Backoff, finish_or_cancel
from ...exceptions import ConfigurationError, StoreError
from ..base import HistoryResetListener, PacketListener
from ..targets import TargetRange
from . import append as appends
from . import dialect, target_reads
from .store import BATCH_MAX, SQLStore

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.5  # seconds between top checks: the most a lost doorbell costs
LISTEN_RETRY_MIN, LISTEN_RETRY_MAX = 1.0, 60.0  # seconds between LISTEN reconnects, doubling
LISTEN_CHECK = 5.0  # seconds between queries that expose a silently dead LISTEN socket
CONNECT_TIMEOUT = 10.0  # seconds for opening the LISTEN connection or one check query
#: ``application_name`` of the LISTEN connection (followed by the channel), to find it
#: in ``pg_stat_activity``
LISTEN_APPLICATION_NAME = "durable_adapter_listen"
#: The channel carries a version, so nodes of another protocol in a rolling upgrade
#: never ring this one's bell.
CHANNEL_PREFIX = "durable_adapter_v1_"
_MAX_IDENTIFIER = 63  # bytes; PostgreSQL truncates longer LISTEN names, pg_notify refuses

# options of SQLAlchemy's asyncpg dialect that asyncpg.connect() does not take
_SQLALCHEMY_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func",
                    "async_creator_fn")


def channel_name(schema: str | None) -> str:
    """The NOTIFY channel of the tables in ``schema`` (channels span a whole database)."""
    name = CHANNEL_PREFIX + (schema or "public")
    if len(name.encode()) > _MAX_IDENTIFIER:
        name = CHANNEL_PREFIX + hashlib.sha256((schema or "").encode()).hexdigest()[:32]
    return name


class PostgresStore(SQLStore):
    """A store in PostgreSQL shared by every server node, for ``postgresql+asyncpg://``.

    :param url: ``postgresql+asyncpg://user:password@host/db`` (empty parts come from
                the libpq environment variables), or a ready :class:`AsyncEngine`.
    :param schema: the PostgreSQL schema of the tables; also names the NOTIFY channel.
    :param listen_url: where to LISTEN when ``url`` goes through a transaction-mode
                       pooler (PgBouncer), which cannot hold a LISTEN: a direct URL to
                       the same database. Default: ``url``.
    :param poll_interval: seconds between checks of the top, in case a doorbell is lost.
    :param auto_migrate: create/upgrade the tables in :meth:`open`; default False (run
                         ``durable-adapter migrate --store URL`` when deploying).
    :param batch_max: most packets written in one append transaction.

    Usage::

        sio = durable_adapter.AsyncServer(store=PostgresStore(
            "postgresql+asyncpg://app@db/app", listen_url="postgresql+asyncpg://app@db-direct/app"))

    :attr:`listening` is set while the LISTEN connection is up.
    """

    #: row locks: a purge batch blocks no append but for its last statement's instant
    purge_pause = 0.0

    def __init__(
        self,
        url: str | AsyncEngine,
        *,
        schema: str | None = None,
        listen_url: str | None = None,
        poll_interval: float = POLL_INTERVAL,
        auto_migrate: bool = False,
        batch_max: int = BATCH_MAX,
    ) -> None:
        super().__init__(url, schema=schema, poll_interval=poll_interval,
                         auto_migrate=auto_migrate, batch_max=batch_max)
        self.listen_url: URL = dialect.parse_url(listen_url) if listen_url else self.url
        for name, given in (("url", self.url), ("listen_url", self.listen_url)):
            if given.get_backend_name() != "postgresql":
                raise ConfigurationError(
                    f"PostgresStore needs a postgresql+asyncpg:// {name}, got "
                    f"{given.render_as_string(hide_password=True)!r}")
        self.channel = channel_name(schema)
        self.listen_application_name = f"{LISTEN_APPLICATION_NAME} {self.channel}"[:63]
        #: set while the LISTEN connection is up (and the follower was woken after it)
        self.listening = asyncio.Event()
        self._listen_stop = asyncio.Event()
        # set when the current LISTEN connection is lost, or by close()
        self._listen_lost = asyncio.Event()
        self._listen_task: asyncio.Task[None] | None = None
        #: the payload of this store's doorbells, which its own listener ignores
        self._bell_token = secrets.token_hex(8)
        self._statement: str | None = None
        self._target_statement: TextClause | None = None

    _driver_errors = (*SQLStore._driver_errors, asyncpg.PostgresError, asyncpg.InterfaceError)

    def _create_engine(self) -> AsyncEngine:
        # pre-ping: after a server restart a pooled connection is found dead before it
        # is used, instead of failing the first append with it
        return dialect.create_engine(self.url, schema=self.schema, pool_pre_ping=True)

    async def follow(self, listener: PacketListener, *, after: int,
                     skip_delivered: Callable[[], int] | None = None,
                     on_reset: HistoryResetListener | None = None) -> None:
        await super().follow(listener, after=after, skip_delivered=skip_delivered,
                             on_reset=on_reset)
        # LISTEN only where someone follows: an Emitter (say in each Celery worker)
        # writes only and holds no LISTEN connection
        if self._listen_task is None:
            self._listen_stop.clear()
            self._listen_task = asyncio.create_task(self._listen(), name=f"{self!r} listener")

    async def close(self) -> None:
        task, self._listen_task = self._listen_task, None
        if task is not None:
            self._listen_stop.set()
            self._listen_lost.set()
            await finish_or_cancel(task)
        await super().close()

    # -- the doorbell ---------------------------------------------------------------

    async def _write_batch(self, driver: Any, batch: appends.Batch, now: float) -> int:
        # the doorbell is in the statement: delivered at COMMIT, never on a failure
        if self._statement is None:
            self._statement = appends.postgres_statement(self.engine.dialect, self.schema)
        row = await driver.fetchrow(self._statement,
                                    *appends.postgres_args(batch, now, self.channel,
                                                            self._bell_token))
        if row is None:
            raise StoreError("the counter row is missing (tables emptied by hand?)")
        return int(row[0])

    def _target_query(self, ranges: Sequence[TargetRange]) -> tuple[Any, dict[str, Any]]:
        if self._target_statement is None:
            self._target_statement = target_reads.postgres_query(self.engine.dialect,
                                                                 self.schema)
        return self._target_statement, target_reads.postgres_params(ranges)

    def _lost(self, error: BaseException, driver: Any) -> bool:
        # as SQLAlchemy's asyncpg dialect judges a disconnect: the connection is closed
        return isinstance(error, asyncio.CancelledError | OSError | TimeoutError
                          | asyncpg.InterfaceError | asyncpg.PostgresConnectionError) \
            or driver.is_closed()

    def _driver_closed(self, driver: Any) -> bool:
        return bool(driver.is_closed())

    def _on_notification(self, _connection: Any, _pid: int, _channel: str,
                         payload: str) -> None:
        # this store's own commits were seen at commit (SQLStore._committed)
        if payload != self._bell_token:
            self._wakeup.set()

    async def _listen(self) -> None:
        """LISTEN until :meth:`close`, reconnecting with back-off after any loss."""
        backoff = Backoff(LISTEN_RETRY_MIN, LISTEN_RETRY_MAX)
        while not self._listen_stop.is_set():
            try:
                await self._listen_once()
            except Exception as exc:  # any failure: reconnect; CancelledError passes
                if self.listening.is_set():  # it was up: a new loss starts over
                    backoff.reset()
                logger.warning(
                    "LISTEN on %s failed, retrying in %.1f s: %s", self.channel,
                    backoff.delay, exc, extra={"action": "listen_retry"})
            finally:
                self.listening.clear()
            await backoff.wait(self._listen_stop)

    async def _listen_once(self) -> None:
        """One LISTEN connection's life: returns when it is lost or the store closes."""
        kwargs = dict(self.engine.dialect.create_connect_args(self.listen_url)[1])
        for option in _SQLALCHEMY_ONLY:
            kwargs.pop(option, None)
        lost = self._listen_lost = asyncio.Event()
        connection = await asyncpg.connect(
            **kwargs, timeout=CONNECT_TIMEOUT,
            server_settings={"application_name": self.listen_application_name})
        try:
            connection.add_termination_listener(lambda _: lost.set())
            await connection.add_listener(self.channel, self._on_notification)
            # whatever was committed while no one listened is read from the cursor now
            self._wakeup.set()
            self.listening.set()
            logger.info("listening on %s", self.channel, extra={"action": "listening"})
            while not self._listen_stop.is_set() and not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), LISTEN_CHECK)
                if not self._listen_stop.is_set() and not lost.is_set():
                    # a half-open socket (a silent network loss) only shows on use
                    await connection.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT)
            if lost.is_set() and not self._listen_stop.is_set():
                raise ConnectionError("the LISTEN connection was closed by the server")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT)
            if not connection.is_closed():
                connection.terminate()

