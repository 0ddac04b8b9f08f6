"""When a socket was in which room, in seq positions, so a replay sends what live sent.

A node delivers packets in seq order; a socket that joins a room while the node has
delivered up to ``p`` receives that room's packets with ``seq > p``, and one that leaves
at ``p`` received them up to ``p``. Each (room, stay) is kept as an interval
``(joined_after, left_after)`` (``left_after`` None while the socket is still in it),
and a replay sends a packet only if the socket was in its room at its seq: a newcomer
never gets a room's history from before it joined or from while it was away.

The log is bounded: beyond :data:`MAX_CLOSED` finished stays the oldest are dropped and
``since`` moves up to where they ended; a replay starting before ``since`` cannot be
told apart and is refused (a fresh session) rather than guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

MAX_CLOSED = 100  # finished stays kept per socket

Interval = tuple[int, int | None]  # (joined_after, left_after or None: still a member)


class Addressed(Protocol):
    """What a membership reads of a packet (a :class:`~.base.StoredPacket`)."""

    @property
    def seq(self) -> int: ...

    @property
    def rooms(self) -> tuple[str, ...]: ...

    @property
    def except_rooms(self) -> tuple[str, ...]: ...


class SavedRooms(Protocol):
    """What :func:`membership_of` reads of a saved socket (a :class:`~.base.Session`)."""

    @property
    def membership(self) -> MembershipLog | None: ...

    @property
    def rooms(self) -> tuple[str, ...]: ...

    @property
    def start_seq(self) -> int: ...

    @property
    def sid(self) -> str: ...


@dataclass(kw_only=True)
class MembershipLog:
    """Room stays of one socket; its own sid room is implied and never listed."""

    #: stays that ended at or before this seq were dropped: the log is exact above it
    since: int = 0
    rooms: dict[str, list[Interval]] = field(default_factory=dict)

    @classmethod
    def since_start(cls, rooms: Iterable[str], start_seq: int, sid: str) -> MembershipLog:
        """What a session saved without a log is taken to mean: its rooms all along."""
        return cls(rooms={room: [(start_seq, None)] for room in rooms if room != sid})

    def join(self, room: str, at: int) -> None:
        stays = self.rooms.setdefault(room, [])
        if stays and stays[-1][1] is None:
            return  # already in it
        if stays and stays[-1][1] == at:  # left and came back with nothing in between
            stays[-1] = (stays[-1][0], None)
            return
        stays.append((at, None))

    def leave(self, room: str, at: int) -> None:
        stays = self.rooms.get(room)
        if not stays or stays[-1][1] is not None:
            return
        joined = stays[-1][0]
        if joined >= at:  # no packet was delivered while it was in: no stay at all
            stays.pop()
            if not stays:
                del self.rooms[room]
        else:
            stays[-1] = (joined, at)
            self._bound()

    def _bound(self) -> None:
        ends = sorted(left for stays in self.rooms.values() for _, left in stays
                      if left is not None)
        if len(ends) > MAX_CLOSED:
            self.forget_through(ends[len(ends) - MAX_CLOSED - 1])

    def forget_through(self, seq: int) -> None:
        """Drop the stays that ended at or before ``seq``."""
        self.since = max(self.since, seq)
        for room in list(self.rooms):
            kept = [(a, b) for a, b in self.rooms[room] if b is None or b > seq]
            if kept:
                self.rooms[room] = kept
            else:
                del self.rooms[room]

    def was_in(self, room: str, seq: int) -> bool:
        for joined, left in self.rooms.get(room, ()):
            if joined < seq and (left is None or seq <= left):
                return True
        return False

    def rooms_during(self, after: int, until: int) -> list[str]:
        """The rooms the socket was in at some seq of ``(after, until]``."""
        return [room for room, stays in self.rooms.items()
                if any(joined < until and (left is None or left > after)
                       for joined, left in stays)]

    def was_for(self, packet: Addressed, sid: str) -> bool:
        """True when socket ``sid`` was a recipient of ``packet`` at its seq."""
        # plain loops: a replay asks this of every packet it may owe
        seq = packet.seq
        for room in packet.except_rooms:
            if room == sid or self.was_in(room, seq):
                return False
        rooms = packet.rooms
        if not rooms:
            return True
        for room in rooms:
            if room == sid or self.was_in(room, seq):
                return True
        return False

    def restarted(self, at: int) -> MembershipLog:
        """The rooms it is in now, as stays from ``at`` on: for a new history whose seqs
        start after ``at`` (the old history's seqs mean nothing there)."""
        return MembershipLog(since=at, rooms={room: [(at, None)] for room, stays
                                              in self.rooms.items() if stays[-1][1] is None})

    def copy(self) -> MembershipLog:
        return MembershipLog(since=self.since,
                             rooms={room: list(stays) for room, stays in self.rooms.items()})

    # -- stored form: JSON types only, room names never used as keys (MongoDB) --------

    def to_value(self) -> dict[str, Any]:
        return {"since": self.since,
                "rooms": [[room, [list(stay) for stay in stays]]
                          for room, stays in self.rooms.items()]}

    @classmethod
    def from_value(cls, value: Any) -> MembershipLog:
        """The inverse of :meth:`to_value`; anything else raises ValueError."""
        try:
            since = value["since"]
            rooms: dict[str, list[Interval]] = {}
            for room, stays in value["rooms"]:
                if not isinstance(room, str) or room in rooms:
                    raise ValueError("room name missing or listed twice")
                rooms[room] = _stays(stays)
            return cls(since=_seq(since), rooms=rooms)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a membership log: {exc}") from exc


def _stays(value: Any) -> list[Interval]:
    """A room's stays as :meth:`MembershipLog.leave` records them: at least one, each
    ending after it began, in order, only the last one open."""
    stays: list[Interval] = [(_seq(joined), None if left is None else _seq(left))
                             for joined, left in value]
    if not stays:
        raise ValueError("a room without a stay")
    for index, (joined, left) in enumerate(stays):
        if left is None and index != len(stays) - 1:
            raise ValueError("an open stay before another")
        if left is not None and left <= joined:
            raise ValueError("a stay that ends before it begins")
        if index and joined < (stays[index - 1][1] or 0):
            raise ValueError("stays out of order")
    return stays


def _seq(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("seq")
    return value


def membership_of(session: SavedRooms) -> MembershipLog:
    """The session's log, or for a session saved before logs existed its rooms all along."""
    if session.membership is not None:
        return session.membership
    return MembershipLog.since_start(session.rooms, session.start_seq, session.sid)
