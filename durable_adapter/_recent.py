"""This node's recent history in memory: each stored packet encoded once, recent replays
read without a query.

Two things share one byte budget:

* **frames**: a stored packet's Socket.IO encoding (its offset last) is the same for
  every recipient, so it is kept per seq and reused by live delivery and every replay;
* **the window**: the packets this node delivered, seq-contiguous across namespaces,
  indexed by target (:mod:`.stores.targets`) as the store is. A replay whose whole range
  lies inside it reads its targets' packets from here; any other range (older, or from
  before this process started) goes to the store's target index (``_owed``).

The window never has a hole: it only grows at its top, by the next seq, and only
shrinks at its bottom. A packet that does not follow its top (the follower skipped an
undecodable or trimmed packet, or the history was replaced) starts a new window, so a
range it does claim to cover holds every packet the store would return for it. Whether
those packets are still retained is not its business: the server checks the store's
bounds around every replay, as before.
"""

from __future__ import annotations

import bisect
import itertools
import marshal
import struct
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Final

from engineio import packet as eio_packet

from .stores.base import StoredPacket
from .stores.targets import targets_of

#: bytes counted per kept packet and per kept frame list besides the payload itself
#: (the objects, their dict slots); a rough figure, so that many tiny packets count too
ENTRY_OVERHEAD = 300
_SCALAR = 16  # bytes counted for a number, bool or None inside a payload
_MAX_STEPS = 1_000_000


# The seqs of one target in the window, ascending: (head, packed), the seqs as native
# 8-byte integers in a bytearray (which the garbage collector does not track, unlike a
# list or an instance: a target per sid, as each socket's own emits make, would bring
# back a tracked object per packet), those before index ``head`` evicted already.
_Seqs = tuple[int, bytearray]
_SEQ = struct.Struct("=q")


def _seqs_between(entry: _Seqs, after: int, until: int) -> list[int]:
    head, packed = entry
    with memoryview(packed) as raw, raw.cast("q") as seqs:
        lo = bisect.bisect_right(seqs, after, lo=head)
        found: list[int] = seqs[lo:bisect.bisect_right(
            seqs, until, lo=lo)].tolist()
    return found


def _seqs_dropped_through(entry: _Seqs, seq: int) -> _Seqs | None:
    """``entry`` without its seqs up to ``seq``; None when none is left."""
    head, packed = entry
    if _SEQ.unpack_from(packed, len(packed) - _SEQ.size)[0] <= seq:  # all of them
        return None
    if _SEQ.unpack_from(packed, head * _SEQ.size)[0] > seq:  # none of them
        return entry
    with memoryview(packed) as raw, raw.cast("q") as seqs:
        head = bisect.bisect_right(seqs, seq, lo=head)
        count = len(seqs)
    if head == count:
        return None
    if head > 64 and head * 2 > count:  # compact now and then
        del packed[:head * _SEQ.size]
        head = 0
    return head, packed


# The garbage collector must not see the kept entries. A full collection walks every
# tracked object, and the rate of full collections follows how many survive: a window of
# dataclasses, named tuples and payload lists and dicts made both grow with the
# application's traffic (a reconnect storm on a busy node paid a collection of the whole
# window). So each entry is a tuple of strings, bytes and numbers only, which CPython
# stops tracking at the first collection that sees it (a tuple holding another tuple can
# be looked at before the inner one is untracked, and then stays tracked until its
# generation is collected again: for the window's entries, the oldest one).
#
# window, per seq: (record, size, tick); the record is the packet's (namespace, rooms,
# except_rooms, created_at, data) marshalled to bytes, or the packet itself when marshal
# cannot hold its payload (an object other than str, bytes, numbers, None, lists,
# tuples, dicts and sets, or a subclass of one)
_RECORD: Final = 0
_SIZE: Final = 1  # in both
_TICK: Final = 2  # in both
_Kept = tuple["bytes | StoredPacket", int, int]
# frames, per seq: (parts, size, tick, how); the engine.io MESSAGE payloads: none
# (cannot be encoded), one (the part itself) or several (marshalled)
_PARTS: Final = 0
_HOW: Final = 3
_NO_PARTS, _ONE_PART, _PARTS_MARSHALLED = 0, 1, 2
_Frames = tuple["str | bytes", int, int, int]


def _record(packet: StoredPacket) -> bytes | StoredPacket:
    try:  # a bytearray or memoryview reads back as bytes, as from the store (_codec)
        return marshal.dumps((packet.namespace, packet.rooms, packet.except_rooms,
                              packet.created_at, packet.data))
    except (ValueError, RecursionError):  # another type, a subclass, too deep
        return packet


def _packet(seq: int, record: bytes | StoredPacket) -> StoredPacket:
    """The packet of a window entry; a marshalled one's payload is a fresh copy."""
    if isinstance(record, StoredPacket):
        return record
    namespace, rooms, except_rooms, created_at, data = marshal.loads(record)
    return StoredPacket(namespace=namespace, data=data, rooms=rooms,
                        except_rooms=except_rooms, created_at=created_at, seq=seq)


def _addressed(record: bytes | StoredPacket) -> tuple[str, tuple[str, ...]]:
    """The namespace and rooms of a window entry."""
    if isinstance(record, StoredPacket):
        return record.namespace, record.rooms
    namespace, rooms, *_ = marshal.loads(record)
    return namespace, rooms


def payload_size(value: Any) -> int:
    """About how many bytes ``value`` (a packet's data) holds: its strings and bytes,
    plus a little per item (linear, as encoding it is)."""
    size, stack, steps = 0, [value], 0
    while stack and steps < _MAX_STEPS:  # bounded, should a payload hold a cycle
        steps += 1
        item = stack.pop()
        if isinstance(item, str | bytes | bytearray):
            size += len(item) + _SCALAR
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            size += _SCALAR
    return size


class RecentHistory:
    """Frames per seq and a contiguous window of delivered packets, bounded in bytes.

    ``max_bytes`` is the option ``history_cache_bytes`` (its default, with the other
    options': :data:`._recovery.DEFAULT_HISTORY_CACHE_BYTES`); 0 keeps nothing (every
    replay reads the store, every delivery encodes). Not thread-safe: used from the
    server's event loop only.
    """

    def __init__(self, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._ticks = itertools.count()
        self._frames: OrderedDict[int, _Frames] = OrderedDict()
        self._window: dict[int, _Kept] = {}  # seqs lo+1 .. hi, every one of them
        self._lo = self._hi = 0
        self._bytes = 0
        #: (namespace, target) -> the seqs of the window's packets sent to it
        self._targets: dict[tuple[str, str], _Seqs] = {}

    # -- what is kept ------------------------------------------------------------------

    @property
    def window(self) -> tuple[int, int]:
        """``(lo, hi)``: the window holds every delivered packet with lo < seq <= hi."""
        return self._lo, self._hi

    @property
    def size(self) -> int:
        """Bytes counted for what is kept now (at most ``max_bytes``)."""
        return self._bytes

    def clear(self) -> None:
        """Forget everything: the history was replaced (seqs start again, another
        epoch in every offset)."""
        self._frames.clear()
        self._window.clear()
        self._targets.clear()
        self._lo = self._hi = 0
        self._bytes = 0

    def add(self, packet: StoredPacket, frames: list[eio_packet.Packet] | None = None
            ) -> None:
        """``packet`` was delivered by this node, after every packet added before it;
        ``frames``: what it encodes to, when known (kept, and its size counted from them
        rather than by walking the data)."""
        if not self.max_bytes:
            return
        seq = packet.seq
        if seq != self._hi + 1:
            # not the next one (a skipped seq, a new history): start over just below it,
            # claiming nothing older
            self._drop_window()
            self._lo = seq - 1
        data_size = payload_size(packet.data) if frames is None \
            else sum(len(frame.data) for frame in frames)
        size = ENTRY_OVERHEAD + data_size
        self._window[seq] = (_record(packet), size, next(self._ticks))
        for target in targets_of(packet.rooms):
            key = (packet.namespace, target)
            entry = self._targets.get(key)
            if entry is None:
                self._targets[key] = (0, bytearray(_SEQ.pack(seq)))
            else:
                entry[1].extend(_SEQ.pack(seq))
        self._hi = seq
        self._bytes += size
        if frames is not None:
            self.keep_frames(seq, frames)
        self._evict()

    def read(self, after: int, until: int, namespace: str) -> list[StoredPacket] | None:
        """The packets of ``namespace`` with ``after < seq <= until``, in seq order, or
        None when the window does not hold that whole range (read the store then)."""
        if until <= after:
            return []
        if after < self._lo or until > self._hi:
            return None
        window = self._window
        packets = (_packet(seq, window[seq][_RECORD]) for seq in range(after + 1, until + 1))
        return [packet for packet in packets if packet.namespace == namespace]

    def read_targets(self, after: int, until: int, namespace: str, targets: Iterable[str]
                     ) -> list[StoredPacket] | None:
        """The packets of ``namespace`` sent to any of ``targets`` with
        ``after < seq <= until``, in seq order, each once; None when the window does not
        hold that whole range (read the store then)."""
        if until <= after:
            return []
        if after < self._lo or until > self._hi:
            return None
        found: set[int] = set()
        for target in targets:
            entry = self._targets.get((namespace, target))
            if entry is not None:
                found.update(_seqs_between(entry, after, until))
        window = self._window
        return [_packet(seq, window[seq][_RECORD]) for seq in sorted(found)]

    def frames(self, seq: int) -> list[eio_packet.Packet] | None:
        """The frames kept for ``seq`` (``[]``: it cannot be encoded), None if none are.

        Each call gets its own engine.io packets: one caches its encoding on first send,
        base64 for a polling client, which a websocket client must never get.
        """
        kept = self._frames.get(seq)
        if kept is None:
            return None
        how, held = kept[_HOW], kept[_PARTS]
        parts = () if how == _NO_PARTS else (held,) if how == _ONE_PART \
            else marshal.loads(held)  # type: ignore[arg-type]  # bytes when marshalled
        return [eio_packet.Packet(eio_packet.MESSAGE, part) for part in parts]

    def keep_frames(self, seq: int, frames: list[eio_packet.Packet] | None) -> None:
        """Keep what ``seq`` encodes to (None: it cannot be encoded)."""
        if not self.max_bytes or seq in self._frames:
            return
        parts = tuple(frame.data for frame in frames or ())
        size = ENTRY_OVERHEAD + sum(len(part) for part in parts)
        if not parts:
            kept: _Frames = ("", size, next(self._ticks), _NO_PARTS)
        elif len(parts) == 1:
            kept = (parts[0], size, next(self._ticks), _ONE_PART)
        else:
            kept = (marshal.dumps(parts), size, next(self._ticks), _PARTS_MARSHALLED)
        self._frames[seq] = kept
        self._bytes += size
        self._evict()

    # -- the budget -----------------------------------------------------------------------

    def _drop_window(self) -> None:
        self._bytes -= sum(kept[_SIZE] for kept in self._window.values())
        self._window.clear()
        self._targets.clear()
        self._lo = self._hi

    def _evict(self) -> None:
        """Drop the oldest kept (frames, or the window's bottom) until within budget."""
        window, frames = self._window, self._frames
        while self._bytes > self.max_bytes:
            bottom = window.get(self._lo + 1)
            if frames:
                seq, oldest = next(iter(frames.items()))
                if bottom is None or oldest[_TICK] < bottom[_TICK]:
                    del frames[seq]
                    self._bytes -= oldest[_SIZE]
                    continue
            if bottom is None:
                return  # nothing left (unreachable: sizes are positive)
            # only ever from the bottom: the window stays contiguous
            del window[self._lo + 1]
            self._lo += 1
            self._bytes -= bottom[_SIZE]
            namespace, rooms = _addressed(bottom[_RECORD])
            for target in targets_of(rooms):
                key = (namespace, target)
                entry = self._targets.get(key)
                if entry is not None:
                    left = _seqs_dropped_through(entry, self._lo)
                    if left is None:
                        del self._targets[key]
                    else:
                        self._targets[key] = left


