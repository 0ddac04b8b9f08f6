"""The follower of a Redis store: ``XREAD BLOCK`` on the packet and control streams.

It runs on a dedicated connection (named, so operators and tests can find it in
``CLIENT LIST``). The stream is the truth: after a failure or a reconnect the next XREAD
starts from the same cursor, so nothing appended meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from .base import ControlMessage, PacketListener, StoredPacket

logger = logging.getLogger(__name__)

FOLLOW_PAGE = 500  # stream entries per XREAD
RETRY_MIN, RETRY_MAX = 1.0, 60.0  # seconds of back-off after a failed XREAD, doubling

Entry = tuple[bytes, dict[bytes, bytes]]


def entry_seq(entry_id: bytes | str) -> int:
    """The seq of a packet entry ``b"<seq>-0"``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


class RedisFollower:
    """Hands packets after ``cursor`` to the listener in seq order, control messages to
    the control listener; :meth:`run` is the body of the store's follower task."""

    def __init__(
        self,
        *,
        client: Redis,
        packets_key: str,
        control_key: str,
        cursor: int,
        control_cursor: str,
        block_ms: int,
        listener: PacketListener,
        control_listener: Callable[[], Callable[[ControlMessage], Awaitable[None]] | None],
        decode_packet: Callable[[Entry], StoredPacket],
        decode_control: Callable[[Entry], ControlMessage],
        check_epoch: Callable[[bytes], Awaitable[bool]],
        following: asyncio.Event,
    ) -> None:
        self._client = client
        self._packets_key = packets_key
        self._control_key = control_key
        self.cursor = cursor
        self._control_cursor = control_cursor
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
                            {self._packets_key: f"{self.cursor}-0",
                             self._control_key: self._control_cursor},
                            count=FOLLOW_PAGE,
                            block=self._block_ms,
                        )
                        delay = RETRY_MIN
                        await self._handle(reply or [])
                except Exception as exc:  # survive a lost connection; CancelledError passes
                    logger.warning(
                        "following the Redis store failed, reading again from seq %d in "
                        "%.0f s: %s", self.cursor, delay, exc,
                        extra={"action": "follow_retry"},
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
        finally:
            self._following.clear()

    async def _handle(self, reply: Any) -> None:
        for stream, entries in reply:
            name = stream.decode() if isinstance(stream, bytes) else stream
            if name == self._packets_key:
                await self._deliver(entries)
            else:
                await self._control(entries)

    async def _deliver(self, entries: list[Entry]) -> None:
        batch: list[StoredPacket] = []
        for entry in entries:
            seq = entry_seq(entry[0])
            if seq <= self.cursor:
                continue
            if not await self._check_epoch(entry[1].get(b"e", b"")):
                logger.warning("skipping seq %d of a replaced history", seq,
                               extra={"action": "follow_skip"})
                self.cursor = seq
                continue
            if seq > self.cursor + 1:
                logger.warning(
                    "seqs %d..%d were trimmed before this node delivered them",
                    self.cursor + 1, seq - 1, extra={"action": "follow_gap"},
                )
            self.cursor = seq
            try:
                batch.append(self._decode_packet(entry))
            except Exception:
                logger.exception("skipping the undecodable packet entry %d", seq,
                                 extra={"action": "follow_bad_entry"})
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

    async def _control(self, entries: list[Entry]) -> None:
        for entry_id, fields in entries:
            self._control_cursor = entry_id.decode() if isinstance(entry_id, bytes) \
                else entry_id
            listener = self._control_listener()
            if listener is None:
                continue
            try:
                message = self._decode_control((entry_id, fields))
                await listener(message)
            except Exception:
                logger.exception("a control message failed", extra={"action": "control_failed"})
