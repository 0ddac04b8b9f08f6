"""What every follower does with what it read: decode each packet, hand them over.

A follower must never stall on one packet: one that cannot be decoded is logged and
skipped, and a listener that fails still counts its packets as delivered (delivering
them again would duplicate them). A replay, in contrast, refuses rather than leave a
silent hole (:func:`decode_or_refuse`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from ..exceptions import StoreError
from .base import PacketListener, StoredPacket

logger = logging.getLogger(__name__)
Raw = TypeVar("Raw")


def decode_or_refuse(decode: Callable[[Raw], StoredPacket], raw: Raw, seq: object
                     ) -> StoredPacket:
    """``decode(raw)``, or :class:`StoreError` naming packet ``seq`` (for replays)."""
    try:
        return decode(raw)
    except Exception as exc:
        raise StoreError(f"packet {seq} cannot be decoded: {exc!r}") from exc


def decode_or_skip(decode: Callable[[Raw], StoredPacket], raw: Raw, seq: object
                   ) -> StoredPacket | None:
    """``decode(raw)``, or None after logging why packet ``seq`` is skipped (for followers).

    Each packet is read once by a follower that goes on past it, so this logs once.
    """
    try:
        return decode(raw)
    except Exception:
        logger.exception("skipping packet %s: it cannot be decoded", seq,
                         extra={"action": "follow_bad_packet"})
        return None


def decode_each(decode: Callable[[Raw], StoredPacket], raws: Iterable[Raw],
                seq_of: Callable[[Raw], object]) -> list[StoredPacket]:
    """Every packet of ``raws`` that decodes, in order (the others logged and skipped)."""
    decoded = (decode_or_skip(decode, raw, seq_of(raw)) for raw in raws)
    return [packet for packet in decoded if packet is not None]


async def hand_over(listener: PacketListener, batch: Sequence[StoredPacket]) -> None:
    """Give ``batch`` to ``listener``; if it fails, log it: the packets count as delivered."""
    if not batch:
        return
    try:
        await listener(batch)
    except Exception:
        logger.exception(
            "the packet listener failed on seqs %d..%d", batch[0].seq, batch[-1].seq,
            extra={"action": "listener_failed"},
        )
