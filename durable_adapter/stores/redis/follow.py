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

from ..base import ControlMessage, PacketListener, StoredPacket

logger = logging.getLogger(__name__)

FOLLOW_PAGE = 500  # stream entries per XREAD
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
    them; :meth:`run` is the body of the store's follower task."""

    def __init__(
        self,
        *,
        client: Redis,
        stream: str,
        cursor: int,
        control_floor: tuple[int, int],
        block_ms: int,
        listener: PacketListener,
        control_listener: Callable[[], Callable[[ControlMessage], Awaitable[None]] | None],
        decode_packet: Callable[[Entry], StoredPacket],
        decode_control: Callable[[Entry], ControlMessage],
        check_epoch: Callable[[bytes], Awaitable[bool]],
        following: asyncio.Event,
    ) -> None:
        self._client = client
        self._stream = stream
        self.cursor = cursor  # the last packet seq delivered
        self._position = f"{cursor}-0"  # the last entry id read
        self._control_floor = control_floor
        self._block_ms = block_ms
        self._listener = listener
        self._control_listener = control_listener
        self._decode_packet = decode_packet
        self._decode_control = decode_control
        self._check_epoch = check_epoch
        self._following = following

    async def run(self) -> None:
        delay = RETRY_MIN
        try:
            while True:
                try:
                    await self._client.ping()  # (re)connects and names the connection
                    self._following.set()
                    while True:
                        reply = await self._client.xread(
                            {self._stream: self._position}, count=FOLLOW_PAGE,
                            block=self._block_ms)
                        delay = RETRY_MIN
                        for _, entries in reply or []:
                            await self._handle(entries)
                except Exception as exc:  # survive a lost connection; CancelledError passes
                    logger.warning(
                        "following the Redis store failed, reading again after seq %d in "
                        "%.0f s: %s", self.cursor, delay, exc,
                        extra={"action": "follow_retry"},
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
        finally:
            self._following.clear()

    async def _handle(self, entries: list[Entry]) -> None:
        batch: list[StoredPacket] = []
        for entry in entries:
            entry_id, fields = entry
            seq, n = split_id(entry_id)
            self._position = entry_id.decode()
            if not await self._check_epoch(fields.get(b"e", b"")):
                logger.warning("skipping entry %s of a replaced history", self._position,
                               extra={"action": "follow_skip"})
                continue
            if n:
                await self._deliver(batch)  # the packets before it go first
                batch = []
                if (seq, n) > self._control_floor:
                    await self._control(entry)
                continue
            if seq <= self.cursor:
                continue
            if seq > self.cursor + 1:  # this node fell more than MAXLEN behind
                logger.error(
                    "seqs %d..%d were trimmed before this node delivered them",
                    self.cursor + 1, seq - 1, extra={"action": "follow_gap"},
                )
            self.cursor = seq
            try:
                batch.append(self._decode_packet(entry))
            except Exception:
                logger.exception("skipping the undecodable packet entry %d", seq,
                                 extra={"action": "follow_bad_entry"})
        await self._deliver(batch)

    async def _deliver(self, batch: list[StoredPacket]) -> None:
        if not batch:
            return
        try:
            await self._listener(batch)
        except Exception:
            # the packets count as delivered: delivering them again would duplicate
            logger.exception(
                "the packet listener failed on seqs %d..%d", batch[0].seq, batch[-1].seq,
                extra={"action": "listener_failed"},
            )

    async def _control(self, entry: Entry) -> None:
        listener = self._control_listener()
        if listener is None:
            return
        try:
            await listener(self._decode_control(entry))
        except Exception:
            logger.exception("the control message %s failed", self._position,
                             extra={"action": "control_failed"})
