"""The followers of the MongoDB store: packets in seq order, and live control messages.

Packets: a change stream on the capped packets collection brings each insert (with
``fullDocument``) to every node, but inserts of concurrent writers can land, and so be
seen, out of seq order. :class:`Reassembler` holds early arrivals and releases only the
contiguous run after the cursor. A seq missing for longer than ``gap_timeout`` (its writer
died between taking the seq and inserting it) is filled with a tombstone, inserted with
``_id: seq``: if the real packet landed first the tombstone fails with a duplicate key and
the packet is read instead; otherwise the late writer's insert fails, and its append
raises. Either way every node ends up with the same dense sequence.

The collection is the truth, the stream only a fast path: after every (re)start of the
stream, and every ``poll_interval``, the follower reads ``_id > cursor`` through the _id
index. A stream that cannot resume (its token left the oplog) is reopened from now, and
the read from the cursor recovers what it missed. A missing seq below the oldest retained
packet was overwritten by the capped collection (or purged): the follower raises the
stored ``purged_through`` over it, so recoveries from before it are refused, logs it, and
skips on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, OperationFailure

from ... import metrics
from ..._codec import Codec
from ..._tasks import Backoff
from ...exceptions import StoreError
from ..base import ControlMessage, PacketListener
from ..delivery import decode_each, hand_over
from .schema import (
    HISTORY_ID,
    control_from_document,
    evicted_through,
    is_tombstone,
    packet_from_document,
    tombstone_document,
)

logger = logging.getLogger(__name__)

Document = Mapping[str, Any]
FOLLOW_PAGE = 500  # documents per catch-up read
MAX_PENDING = 20_000  # early arrivals held at most; more are read again later
AWAIT_MS = 250  # longest wait of one getMore on a change stream
RETRY_MIN, RETRY_MAX = 0.5, 30.0  # seconds of back-off after a failure, doubling
INSERTS = [{"$match": {"operationType": "insert"}}]
CANNOT_RESUME = (280, 286)  # ChangeStreamFatalError, ChangeStreamHistoryLost
OLDEST_INSERTS = 100  # oldest insertions whose seqs bound where eviction made holes
HEAD_SCAN = 2_000  # most retained seqs read to find those holes
READY_TIMEOUT = 10.0  # seconds open() waits for the control stream


async def read_evicted_through(packets: AsyncCollection[Any], gap_timeout: float) -> int:
    """:func:`~.schema.evicted_through` of the collection (-1 when it is empty)."""
    oldest = await packets.find(
        {}, projection={"_id": True}, sort=[("$natural", 1)], limit=OLDEST_INSERTS
    ).to_list()
    if not oldest:
        return -1
    horizon = max(int(d["_id"]) for d in oldest)
    head = await packets.find(
        {"_id": {"$lte": horizon}}, projection={"_id": True, "at": True}, sort=[("_id", 1)],
        limit=HEAD_SCAN, hint=[("_id", 1)],
    ).to_list()
    return evicted_through([(int(d["_id"]), float(d["at"])) for d in head], horizon,
                           time.time() - gap_timeout)


async def wait_ready(ready: asyncio.Event, task: asyncio.Task[None], within: float) -> None:
    """Return once ``ready`` is set; :class:`StoreError` if ``task`` ends first or
    ``within`` seconds pass (messages sent meanwhile would be missed)."""
    waiting = asyncio.ensure_future(ready.wait())
    try:
        await asyncio.wait({waiting, task}, timeout=within,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    if not ready.is_set():
        cause = task.exception() if task.done() and not task.cancelled() else None
        raise StoreError("the control message stream did not open within "
                         f"{within:.0f} s") from cause


def cannot_resume(exc: OperationFailure) -> bool:
    """The change stream's resume token is no longer usable (it left the oplog)."""
    details = exc.details or {}
    return exc.code in CANNOT_RESUME or details.get("codeName") in (
        "ChangeStreamHistoryLost", "ChangeStreamFatalError")


class Reassembler:
    """Turns documents arriving in any order into the dense run after ``cursor``.

    Pure bookkeeping: the follower feeds it (:meth:`offer`, :meth:`note_top`), takes the
    ready run (:meth:`take`) and asks which seq is overdue (:meth:`overdue`).
    """

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor
        self.pending: dict[int, Document] = {}
        self.known_top = cursor  # highest seq known to exist (taken from the counter)
        self._gap_since: float | None = None

    def offer(self, document: Document, now: float) -> None:
        seq = document.get("_id")
        if not isinstance(seq, int) or isinstance(seq, bool):  # not a packet of ours
            logger.warning("ignoring a document with _id %r in the packets collection", seq)
            return
        if seq <= self.cursor or seq in self.pending or len(self.pending) >= MAX_PENDING:
            return
        self.pending[seq] = document
        self.note_top(seq, now)

    def note_top(self, top: int, now: float) -> None:
        """``top`` seqs have been handed out: any of them not yet here is a gap."""
        self.known_top = max(self.known_top, top)
        if self._gap_since is None and self.has_gap:
            self._gap_since = now

    @property
    def has_gap(self) -> bool:
        return self.known_top > self.cursor and self.cursor + 1 not in self.pending

    def take(self, now: float) -> list[Document]:
        """The documents (tombstones too) from ``cursor + 1`` on with no hole, in order."""
        run: list[Document] = []
        while (document := self.pending.pop(self.cursor + 1, None)) is not None:
            run.append(document)
            self.cursor += 1
        if run:  # a new head: a gap there is timed from now
            self._gap_since = now if self.has_gap else None
        return run

    def overdue(self, now: float, timeout: float) -> int | None:
        """The seq after the cursor, when it has been missing for ``timeout`` seconds."""
        if self._gap_since is not None and self.has_gap and now - self._gap_since >= timeout:
            return self.cursor + 1
        return None

    def skip_to(self, seq: int, now: float) -> None:
        """Give up on every seq up to ``seq`` (no longer retained)."""
        if seq <= self.cursor:
            return
        self.cursor = seq
        self.known_top = max(self.known_top, seq)
        self.pending = {s: d for s, d in self.pending.items() if s > seq}
        self._gap_since = now if self.has_gap else None


class PacketFollower:
    """Runs one listener from a cursor; :meth:`run` is the body of the store's task."""

    def __init__(
        self,
        *,
        packets: AsyncCollection[Any],
        meta: AsyncCollection[Any],
        following: asyncio.Event,
        gap_timeout: float,
        poll_interval: float,
        codec: Codec,
    ) -> None:
        self._codec = codec
        self._packets = packets
        self._meta = meta
        self._following = following
        self._gap_timeout = gap_timeout
        self._poll_interval = poll_interval
        self._stopping = False
        self._wake = asyncio.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to return after its current getMore (at most ``AWAIT_MS``)."""
        self._stopping = True
        self._wake.set()

    async def run(self, listener: PacketListener, cursor: int) -> None:
        order = Reassembler(cursor)
        token: Mapping[str, Any] | None = None
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        self._following.set()
        try:
            while not self._stopping:
                try:
                    token = await self._follow_stream(order, listener, token)
                    backoff.reset()
                except OperationFailure as exc:
                    if token is not None and cannot_resume(exc):  # reopen from now
                        logger.warning(
                            "the change stream could not resume (%s); reopening it and "
                            "reading the packets after seq %d from the collection",
                            exc, order.cursor, extra={"action": "follow_resume_lost"},
                        )
                        token = None
                        continue
                    await self._back_off(exc, backoff)
                except Exception as exc:  # network, failover, anything: never die
                    await self._back_off(exc, backoff)
        finally:
            self._following.clear()

    async def _back_off(self, exc: Exception, backoff: Backoff) -> None:
        metrics.store_error("follow")
        logger.warning(
            "following the store failed, retrying in %.1f s: %s", backoff.delay, exc,
            extra={"action": "follow_retry"},
        )
        await backoff.wait(self._wake)  # or stop()

    async def _follow_stream(
        self, order: Reassembler, listener: PacketListener, token: Mapping[str, Any] | None
    ) -> Mapping[str, Any] | None:
        """Open (or resume) the stream, catch up from the collection, then follow both."""
        stream = await self._packets.watch(INSERTS, resume_after=token, max_await_time_ms=AWAIT_MS)
        async with stream:
            # opened first, read second: whatever lands in between is in one or the other
            await self._catch_up(order, listener)
            last_poll = time.monotonic()
            while not self._stopping and stream.alive:
                change = await stream.try_next()
                token = stream.resume_token or token
                now = time.monotonic()
                if change is not None and change.get("fullDocument") is not None:
                    order.offer(change["fullDocument"], now)
                if now - last_poll >= self._poll_interval:
                    await self._catch_up(order, listener)
                    last_poll = now
                if (seq := order.overdue(now, self._gap_timeout)) is not None:
                    await self._fill_gap(order, seq)
                await self._deliver(order, listener, self._codec)
        if not self._stopping and not stream.alive:  # invalidated (collection dropped)
            logger.warning("the change stream was invalidated; reopening it from now")
            return None
        return token

    async def _catch_up(self, order: Reassembler, listener: PacketListener) -> None:
        """Read ``_id > cursor`` through the _id index, and learn the counter's top."""
        meta = await self._meta.find_one(
            {"_id": HISTORY_ID}, projection={"top": True, "purged_through": True}
        )
        if meta is not None and int(meta["purged_through"]) > order.cursor:
            self._skipped(order.cursor + 1, int(meta["purged_through"]))
            order.skip_to(int(meta["purged_through"]), time.monotonic())
        after = order.cursor
        while not self._stopping and len(order.pending) < MAX_PENDING:
            page = await self._packets.find(
                {"_id": {"$gt": after}}, sort=[("_id", 1)], limit=FOLLOW_PAGE, hint=[("_id", 1)]
            ).to_list()
            now = time.monotonic()
            for document in page:
                order.offer(document, now)
            await self._deliver(order, listener, self._codec)
            if len(page) < FOLLOW_PAGE:
                break
            after = int(page[-1]["_id"])
        if meta is not None:
            order.note_top(int(meta["top"]), time.monotonic())

    async def _fill_gap(self, order: Reassembler, seq: int) -> None:
        """``seq`` is overdue: tombstone it, or, below the oldest retained packet, skip it.

        A seq the capped collection may have evicted (:func:`read_evicted_through`: eviction
        follows insertion order, so also a hole above the oldest retained seq) can no
        longer be delivered or replayed, so the stored ``purged_through`` is raised over
        it first (recoveries from before it are refused). Below the oldest retained seq
        the follower then skips on, with no tombstone: in a full capped collection it
        would overwrite one more packet. A hole among retained seqs is still tombstoned,
        so a writer that was only slow cannot land it late. This is cautious: a writer
        that died holding such a seq looks the same, and costs only refused recoveries.
        """
        through = await read_evicted_through(self._packets, self._gap_timeout)
        if through >= seq:
            # raised first: a recovery from before it is refused, never silently short
            await self._meta.update_one(
                {"_id": HISTORY_ID}, {"$max": {"purged_through": through}}
            )
            oldest = await self._packets.find_one(
                {}, projection={"_id": True}, sort=[("_id", 1)], hint=[("_id", 1)]
            )
            if oldest is None or int(oldest["_id"]) > seq:
                self._skipped(seq, through)
                order.skip_to(through, time.monotonic())
                return
            # a hole among retained seqs: fenced below, so a slow writer cannot land late
        try:
            # fences the seq: a writer still holding it now fails instead of landing late
            await self._packets.insert_one(tombstone_document(seq, time.time()))
        except DuplicateKeyError:  # the packet landed after all: read it
            document = await self._packets.find_one({"_id": seq})
            if document is not None:
                order.offer(document, time.monotonic())
            return
        logger.warning(
            "seq %d was taken but not written within %.1f s; tombstoned",
            seq, self._gap_timeout, extra={"action": "follow_tombstone"},
        )
        order.offer(tombstone_document(seq, time.time()), time.monotonic())

    @staticmethod
    def _skipped(first: int, last: int) -> None:
        logger.error(
            "packets %d..%d were overwritten by the capped collection or purged before this "
            "node delivered them; skipping them (recoveries from before them are refused). "
            "A larger capped_size_bytes keeps more history.",
            first, last, extra={"action": "follow_skipped"},
        )

    @staticmethod
    async def _deliver(order: Reassembler, listener: PacketListener, codec: Codec) -> None:
        run = [doc for doc in order.take(time.monotonic()) if not is_tombstone(doc)]
        await hand_over(listener, decode_each(lambda doc: packet_from_document(doc, codec), run,
                                              lambda doc: doc.get("_id")))


class ControlFollower:
    """Hands the control messages inserted from now on to a listener (live only)."""

    def __init__(
        self,
        control: AsyncCollection[Any],
        listener: Callable[[], Callable[[ControlMessage], Awaitable[None]] | None],
    ) -> None:
        self._control = control
        self._listener = listener
        self._stopping = False
        self._wake = asyncio.Event()
        #: set once the stream is open: messages inserted from then on are delivered
        self.ready = asyncio.Event()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        token: Mapping[str, Any] | None = None
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        while not self._stopping:
            try:
                stream = await self._control.watch(
                    INSERTS, resume_after=token, max_await_time_ms=AWAIT_MS
                )
                async with stream:
                    self.ready.set()
                    backoff.reset()
                    while not self._stopping and stream.alive:
                        change = await stream.try_next()
                        token = stream.resume_token or token
                        if change is not None and change.get("fullDocument") is not None:
                            await self._dispatch(change["fullDocument"])
                    if not stream.alive:
                        token = None
            except Exception as exc:  # network, failover, anything: never die
                if isinstance(exc, OperationFailure) and token is not None and cannot_resume(exc):
                    token = None  # live only: go on from now
                    continue
                logger.warning(
                    "following control messages failed, retrying in %.1f s: %s",
                    backoff.delay, exc, extra={"action": "control_retry"},
                )
                await backoff.wait(self._wake)

    async def _dispatch(self, document: Document) -> None:
        listener = self._listener()
        if listener is None:
            return
        try:
            message = control_from_document(document)
        except Exception:  # any malformed document: skip it, never the stream
            logger.warning("ignoring a malformed control message %r", document.get("_id"))
            return
        try:
            await listener(message)
        except Exception:  # a bad message must not stop the follower
            logger.exception("the control listener failed on %r", message.method)
