"""The follower of a Redis store: ``XREAD BLOCK`` on the stream of packets and control
messages.

It runs on a dedicated connection (named, so operators and tests can find it in
``CLIENT LIST``). The stream is the truth: after a failure or a reconnect the next XREAD
starts from the same cursor, so nothing appended meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from ... import metrics
from ..._tasks import Backoff
from ..base import (
    UNORDERED_CONTROL,
    ControlMessage,
    HistoryBounds,
    HistoryResetListener,
    PacketListener,
    StoredPacket,
)
from ..delivery import decode_or_skip, hand_over

logger = logging.getLogger(__name__)

FOLLOW_PAGE = 500  # stream entries per XREAD
PEEK_AHEAD = 100  # newest entries looked at for a handover while a node is behind
RETRY_MIN, RETRY_MAX = 1.0, 60.0  # seconds of back-off after a failed XREAD, doubling

Entry = tuple[bytes, dict[bytes, bytes]]


def split_id(entry_id: bytes | str) -> tuple[int, int]:
    """``(seq, n)`` of an entry id: n is 0 for packet seq, >= 1 for a control message."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    seq, _, n = text.partition("-")
    return int(seq), int(n or 0)


def entry_seq(entry_id: bytes | str) -> int:
    """The seq of a packet entry ``b"<seq>-0"``."""
    return split_id(entry_id)[0]


class RedisFollower:
    """Hands packets after ``cursor`` to the listener in seq order, and control messages
    sent after ``control_floor`` to the control listener, each in its place between
    them; :meth:`run` is the body of the store's follower task.

    It follows one history (``epoch``). When the store's history is replaced (FLUSHALL,
    a restart without persistence, a node opening an empty Redis), the new one may start
    below this follower's cursor, where XREAD never looks: so an entry of another epoch,
    and every XREAD that times out, is checked against the store's current history
    (``history()``), and on a new one the follower starts over at its beginning and tells
    ``reset_listener`` first.
    """

    def __init__(
        self,
        *,
        client: Redis,
        stream: str,
        epoch: str,
        cursor: int,
        control_floor: tuple[int, int],
        block_ms: int,
        listener: PacketListener,
        control_listener: Callable[[], Callable[[ControlMessage], Awaitable[None]] | None],
        reset_listener: HistoryResetListener | None,
        decode_packet: Callable[[Entry], StoredPacket],
        decode_control: Callable[[Entry], ControlMessage],
        history: Callable[[], Awaitable[HistoryBounds]],
        following: asyncio.Event,
    ) -> None:
        self._client = client
        self._stream = stream
        self.epoch = epoch  # the history followed
        self.cursor = cursor  # the last packet seq delivered (or skipped)
        self._position = f"{cursor}-0"  # the last entry id handled
        self._control_floor = control_floor
        self._block_ms = block_ms
        self._listener = listener
        self._control_listener = control_listener
        self._reset_listener = reset_listener
        self._decode_packet = decode_packet
        self._decode_control = decode_control
        self._history = history
        #: ids of control entries handed ahead of their place (see _hand_unordered)
        self._early: set[bytes] = set()
        self._following = following

    async def run(self) -> None:
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        try:
            while True:
                try:
                    await self._client.ping()  # (re)connects and names the connection
                    self._following.set()
                    while True:
                        reply: list[tuple[bytes, list[Entry]]] | None  # no decode_responses
                        reply = await self._client.xread(  # type: ignore[assignment]
                            {self._stream: self._position}, count=FOLLOW_PAGE,
                            block=self._block_ms)
                        backoff.reset()
                        if not reply:  # a quiet stream, or a new history below the cursor
                            await self._check_history()
                        for _, entries in reply or []:
                            if len(entries) == FOLLOW_PAGE:  # behind: look at the tail
                                await self._hand_unordered_ahead()
                            await self._handle(entries)
                except Exception as exc:  # survive a lost connection; CancelledError passes
                    metrics.store_error("follow")
                    logger.warning(
                        "following the Redis store failed, reading again after seq %d in "
                        "%.1f s: %s", self.cursor, backoff.delay, exc,
                        extra={"action": "follow_retry"},
                    )
                    await backoff.wait()
        finally:
            self._following.clear()

    async def _handle(self, entries: list[Entry]) -> None:
        """Deliver ``entries``; the position moves past an entry only once it is handled,
        so an entry whose check failed is read again after the retry."""
        await self._hand_unordered(entries)
        batch: list[StoredPacket] = []
        read_to, cursor = self._position, self.cursor
        for entry in entries:
            entry_id, fields = entry
            seq, n = split_id(entry_id)
            if fields.get(b"e") != self.epoch.encode():
                await self._deliver(batch, read_to, cursor)
                batch = []
                if await self._check_history():  # started over: read from there
                    return
                logger.warning("skipping entry %s of a replaced history", entry_id,
                               extra={"action": "follow_skip"})
                self._position = read_to = entry_id.decode()
                continue
            if n:
                await self._deliver(batch, read_to, cursor)  # the packets before it go first
                batch = []
                if entry_id in self._early:  # handed when it was first seen
                    self._early.discard(entry_id)
                elif (seq, n) > self._control_floor:
                    await self._control(entry)
                self._position = read_to = entry_id.decode()
                continue
            read_to = entry_id.decode()
            if seq <= cursor:
                continue
            if seq > cursor + 1:  # this node fell more than MAXLEN behind
                logger.error(
                    "seqs %d..%d were trimmed before this node delivered them",
                    cursor + 1, seq - 1, extra={"action": "follow_gap"},
                )
            cursor = seq
            packet = decode_or_skip(self._decode_packet, entry, seq)
            if packet is not None:
                batch.append(packet)
        await self._deliver(batch, read_to, cursor)

    async def _deliver(self, batch: list[StoredPacket], read_to: str, cursor: int) -> None:
        self._position, self.cursor = read_to, cursor
        await hand_over(self._listener, batch)

    async def _check_history(self) -> bool:
        """Start over if the store's history is no longer the one followed; True if so."""
        bounds = await self._history()
        if bounds.epoch == self.epoch:
            return False
        logger.warning(
            "the Redis history was replaced (epoch %s -> %s): following the new one from "
            "seq %d", self.epoch, bounds.epoch, bounds.purged_through,
            extra={"action": "follow_history_reset"})
        self.epoch, self.cursor = bounds.epoch, bounds.purged_through
        self._position = f"{bounds.purged_through}-0"
        self._control_floor = (bounds.purged_through, 0)
        if self._reset_listener is not None:
            try:
                await self._reset_listener(bounds.purged_through)
            except Exception:
                logger.exception("the history reset listener failed",
                                 extra={"action": "listener_failed"})
        return True

    async def _hand_unordered_ahead(self) -> None:
        """A node behind a long run of packets answers a handover at once: the newest
        entries are looked at for control messages that need no place among them."""
        tail: list[Entry] = await self._client.xrevrange(  # type: ignore[assignment]
            self._stream, max="+", min=f"({self._position}", count=PEEK_AHEAD)
        await self._hand_unordered(list(reversed(tail)))

    async def _hand_unordered(self, entries: list[Entry]) -> None:
        """Hand the control messages of ``entries`` that need no place among the packets
        (``UNORDERED_CONTROL``) now, each once."""
        for entry in entries:
            entry_id, fields = entry
            seq, n = split_id(entry_id)
            if not n or entry_id in self._early or (seq, n) <= self._control_floor \
                    or fields.get(b"e") != self.epoch.encode():
                continue
            try:
                method = self._decode_control(entry).method
            except Exception:
                continue  # handed (and logged) in its place
            if method in UNORDERED_CONTROL:
                self._early.add(entry_id)
                await self._control(entry)

    async def _control(self, entry: Entry) -> None:
        listener = self._control_listener()
        if listener is None:
            return
        try:
            await listener(self._decode_control(entry))
        except Exception:
            logger.exception("the control message %s failed", entry[0],
                             extra={"action": "control_failed"})
