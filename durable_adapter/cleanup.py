"""The TTL cleanup worker: deletes what no session can still need, as its own process.

Run it with ``durable-adapter cleanup --store URL`` beside the servers. Each pass calls
:meth:`Store.purge <durable_adapter.stores.base.Store.purge>`, which deletes

* sessions past their ``expires_at`` (they can no longer be recovered), and
* packets older than ``retention`` seconds, as a prefix of the history, raising the
  store's ``purged_through`` watermark in the same transaction,

in transactions of at most ``batch_size`` rows, so no lock is held for long.

A recoverable session needs the packets after the position it had when its transport
died, which were stored at most about ``max_disconnection_duration`` ago; live sockets
need only the packets in flight. Hence ``retention`` may not be shorter than
``max_disconnection_duration``, and the default adds :data:`RETENTION_MARGIN` for
packets in flight, slow nodes and clock skew. By default the window is the largest
``max_disconnection_duration`` the live servers recorded beside their lease (SQL,
Redis), so no flag has to be kept equal to the servers' setting by hand.

Correctness never depends on this worker: every replay checks the session's expiry and
the ``purged_through`` watermark itself, and refuses (a fresh session, ``recovered``
false) rather than replay a gap. Without the worker storage only grows.

One worker is active per database (see :mod:`._cleanup_lock`); another one waits as a
standby and takes over when the active one exits. Servers with ``cleanup_in_server``
run the same loop (:class:`Worker`) under the same lock (:mod:`._server_cleanup`).

Usage::

    stop = asyncio.Event()
    summary = await run("sqlite+aiosqlite:///app.db", once=True, stop_event=stop)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from . import metrics
from ._cleanup_lock import WorkerLock, lock_of
from ._recovery import DEFAULT_MAX_DISCONNECTION_DURATION as DEFAULT_MAX_DISCONNECTION_DURATION
from ._tasks import Backoff
from .exceptions import ConfigurationError, StoreError
from .stores import existing_store
from .stores.base import PurgeResult, Store
from .stores.urls import ACCEPTED_FORMS, store_scheme

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 60.0  # seconds between two passes
DEFAULT_BATCH_SIZE = 1000  # rows deleted per transaction
RETENTION_MARGIN = 300.0  # seconds the default retention adds to max_disconnection_duration
START_TIMEOUT = 30.0  # seconds to reach the store at start before giving up
STANDBY_POLL = 5.0  # seconds between two tries for the lock while standby
BACKOFF_FIRST = 1.0  # seconds: the first retry after a failure waits up to this (jittered)
BACKOFF_MAX = 60.0  # seconds, the longest wait between retries


@dataclass(frozen=True, kw_only=True)
class CleanupSettings:
    """Validated settings of one worker; see :func:`run` for their meaning.

    The retention of a pass: ``retention`` when given; else the window plus
    :data:`RETENTION_MARGIN`, the window being ``max_disconnection_duration`` when
    given, else the largest one the live servers recorded in the store
    (:func:`window_in_use`), else ``fallback_window``.
    """

    interval: float = DEFAULT_INTERVAL
    once: bool = False
    retention: float | None = None
    max_disconnection_duration: float | None = None
    fallback_window: float = DEFAULT_MAX_DISCONNECTION_DURATION
    batch_size: int = DEFAULT_BATCH_SIZE
    vacuum: bool = False

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ConfigurationError(f"interval must be > 0 seconds, got {self.interval!r}")
        window = self.max_disconnection_duration
        if window is not None and not window > 0:
            raise ConfigurationError(
                f"max_disconnection_duration must be > 0 seconds, got {window!r}")
        if isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.retention is not None and self.retention < (window or 0.0):
            raise ConfigurationError(
                f"retention ({self.retention:g} s) is shorter than max_disconnection_duration "
                f"({window:g} s): sessions that may still recover "
                "would lose the packets they missed. Raise retention, or pass the servers' "
                "max_disconnection_duration")

    @property
    def reads_window(self) -> bool:
        """True when the retention follows what the servers recorded."""
        return self.retention is None and self.max_disconnection_duration is None

    def retention_for(self, recorded: float | None) -> float:
        """The retention of a pass, given the largest window the live servers recorded."""
        if self.retention is not None:
            return self.retention
        window = self.max_disconnection_duration
        if window is None:
            window = recorded if recorded is not None else self.fallback_window
        return window + RETENTION_MARGIN

    @property
    def effective_retention(self) -> float:
        """The retention when the servers recorded nothing."""
        return self.retention_for(None)


async def window_in_use(store: Store, now: float) -> float | None:
    """The largest ``max_disconnection_duration`` among the live servers of ``store``,
    as they record it beside their lease (an optional ability: SQL, Redis); None when
    none recorded one, or the store keeps none."""
    largest = getattr(store, "largest_window", None)
    if largest is None:
        return None
    window: float | None = await largest(now)
    return window


@dataclass(frozen=True, kw_only=True)
class CleanupSummary:
    """What one :func:`run` did, in total."""

    passes: int = 0
    sessions: int = 0
    packets: int = 0
    purged_through: int = 0


def open_target(store_url: str, schema: str | None = None) -> tuple[Store, WorkerLock]:
    """The (unopened) store at ``store_url`` and the lock that makes its worker single.

    SQL URLs get a plain :class:`~durable_adapter.stores.sql.SQLStore` that never
    migrates: the worker only purges, it needs no follower or doorbell.
    """
    if not isinstance(store_url, str) or "://" not in store_url:
        raise ConfigurationError(
            f"--store must be a store URL, got {store_url!r}; accepted: "
            + ", ".join(ACCEPTED_FORMS))
    scheme = store_scheme(store_url)
    if scheme == "memory":
        raise ConfigurationError("memory:// lives inside one server process; a cleanup "
                                 "worker needs a shared store (SQL, MongoDB, Redis)")
    store = existing_store(store_url, schema=schema)
    return store, lock_of(store)


async def run(
    store_url: str,
    *,
    interval: float = DEFAULT_INTERVAL,
    once: bool = False,
    retention: float | None = None,
    max_disconnection_duration: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    stop_event: asyncio.Event | None = None,
    schema: str | None = None,
    standby_poll: float | None = None,
    vacuum: bool = False,
) -> CleanupSummary:
    """Purge the store at ``store_url`` every ``interval`` seconds until ``stop_event``.

    :param store_url: the servers' store URL.
    :param interval: seconds between passes.
    :param once: one pass, then return; if another worker holds the lock, return
                 without a pass. A failure raises instead of being retried.
    :param retention: seconds packets are kept; at least ``max_disconnection_duration``
                      (default: the window plus :data:`RETENTION_MARGIN`).
    :param max_disconnection_duration: the window, in seconds; default: the largest
                      one the live servers recorded in the store (SQL, Redis), else
                      :data:`DEFAULT_MAX_DISCONNECTION_DURATION`. Given, it overrides
                      what the servers recorded.
    :param batch_size: rows deleted per transaction.
    :param stop_event: set it to stop: the batch in flight finishes, then ``run`` returns.
    :param schema: PostgreSQL schema of the tables.
    :param standby_poll: seconds between tries for the lock while another worker has it
                         (default: :data:`STANDBY_POLL` or ``interval`` if shorter).
    :param vacuum: SQLite: after each pass, give the freed space back to the file system
                   (:meth:`SQLStore.vacuum <durable_adapter.stores.sql.SQLStore.vacuum>`).
    :raises ConfigurationError: bad settings or URL.
    :raises StoreError: the store cannot be reached at start (later failures are
                        logged and retried with backoff, unless ``once``).
    """
    settings = CleanupSettings(interval=interval, once=once, retention=retention,
                               max_disconnection_duration=max_disconnection_duration,
                               batch_size=batch_size, vacuum=vacuum)
    if vacuum and not store_url.lower().startswith("sqlite"):
        raise ConfigurationError("--vacuum returns space on SQLite only; on PostgreSQL "
                                 "autovacuum reuses it (see docs/operations.md)")
    store, lock = open_target(store_url, schema)
    stop = stop_event if stop_event is not None else asyncio.Event()
    try:
        await asyncio.wait_for(store.open(), START_TIMEOUT)
    except TimeoutError as exc:
        raise StoreError(f"no answer from the store within {START_TIMEOUT:g} s") from exc
    poll = standby_poll if standby_poll is not None else min(STANDBY_POLL, interval)
    worker = Worker(store, lock, settings, stop, poll)
    try:
        return await worker.serve()
    finally:
        await lock.release()
        await store.close()


class Worker:
    """Passes every ``settings.interval`` while it holds ``lock``, a standby otherwise;
    the loop of :func:`run`, and of a server that purges in process
    (:mod:`._server_cleanup`)."""

    def __init__(self, store: Store, lock: WorkerLock, settings: CleanupSettings,
                 stop: asyncio.Event, standby_poll: float) -> None:
        self.store = store
        self.lock = lock
        self.settings = settings
        self.stop = stop
        self.standby_poll = standby_poll
        self.summary = CleanupSummary()
        #: the retention of the latest pass (seconds)
        self.retention: float | None = None
        #: False: a pass that removed nothing is logged at DEBUG only
        self.log_empty = True

    async def serve(self) -> CleanupSummary:
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        standby_logged = False
        while not self.stop.is_set():
            try:
                if not self.lock.held:
                    if not await self.lock.try_acquire():
                        if self.settings.once:
                            logger.info("another cleanup worker holds %s; nothing to do",
                                        self.lock.description, extra={"action": "standby_exit"})
                            break
                        if not standby_logged:
                            logger.info("standby: another cleanup worker holds %s; waiting "
                                        "to take over", self.lock.description,
                                        extra={"action": "standby"})
                            standby_logged = True
                        await self._sleep(self.standby_poll)
                        continue
                    standby_logged = False
                    logger.info("cleanup worker active (%s); a pass every %g s",
                                self.lock.description, self.settings.interval,
                                extra={"action": "active"})
                else:
                    await self.lock.check()
                await self._pass()
                backoff.reset()
            except StoreError as exc:
                metrics.store_error("purge")
                if self.settings.once:
                    raise
                delay = backoff.next()
                logger.warning("cleanup failed: %s; retrying in %g s", exc, delay,
                               extra={"action": "retry", "delay": delay})
                await self._sleep(delay)
                continue
            if self.settings.once:
                break
            await self._sleep(self.settings.interval)
        logger.info("cleanup worker stopped after %d pass(es): %d sessions, %d packets removed",
                    self.summary.passes, self.summary.sessions, self.summary.packets,
                    extra={"action": "stopped"})
        return self.summary

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` or until stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _pass(self) -> None:
        """One purge; a stop request cancels it between batches (the SQL store lets the
        batch in flight commit: each batch runs shielded from its caller's cancellation)."""
        now = time.time()
        recorded = await window_in_use(self.store, now) if self.settings.reads_window else None
        retention = self.settings.retention_for(recorded)
        if retention != self.retention:
            self.retention = retention
            logger.info("retention %g s (%s)", retention, "the largest window the servers "
                        "recorded + margin" if recorded is not None else "from the settings",
                        extra={"action": "retention", "retention": retention})
        purge = asyncio.create_task(self.store.purge(
            now=now, retention=retention,
            batch_size=self.settings.batch_size), name="durable_adapter cleanup pass")
        stopped = asyncio.create_task(self.stop.wait(), name="durable_adapter cleanup stop")
        try:
            await asyncio.wait({purge, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not purge.done():
                purge.cancel()
            await asyncio.wait({purge, stopped})
        if purge.cancelled():
            logger.info("stopping: pass interrupted after its batch in flight",
                        extra={"action": "interrupted"})
            return
        self._record(purge.result())
        await metrics.cleanup_pass(self.store, purge.result())
        if self.settings.vacuum and not self.stop.is_set():
            await self._vacuum()

    async def _vacuum(self) -> None:
        vacuum = getattr(self.store, "vacuum", None)
        if vacuum is None:
            return
        before, after = await vacuum()
        logger.info("vacuumed: the file went from %.1f MB to %.1f MB", before / 2**20,
                    after / 2**20, extra={"action": "vacuumed", "bytes_before": before,
                                          "bytes_after": after})

    def _record(self, result: PurgeResult) -> None:
        s = self.summary
        self.summary = CleanupSummary(passes=s.passes + 1, sessions=s.sessions + result.sessions,
                                      packets=s.packets + result.packets,
                                      purged_through=result.purged_through)
        # a server purging in process passes often: an empty pass is not news there
        level = logging.INFO if result.sessions or result.packets or self.log_empty \
            else logging.DEBUG
        logger.log(level, "removed %d expired session(s) and %d packet(s); history retained "
                   "after seq %d", result.sessions, result.packets, result.purged_through,
                   extra={"action": "purged", "sessions": result.sessions,
                          "packets": result.packets, "purged_through": result.purged_through})
