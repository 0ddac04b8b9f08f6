"""Each stored packet is findable by its targets, so a restore reads what its socket may
be owed and nothing else.

A packet's targets: :data:`NAMESPACE` when it went to the whole namespace (no rooms; its
except rooms do not matter here), else each room it was sent to (a sid is a room). Every
store keeps an index keyed by ``(namespace, target)`` and ordered by seq, written in the
transaction that stores the packet. The same pair is what a later split of the history
by target would partition on, so no store keys it on anything wider.

Target strings carry a one-character kind, so a room can have any name, even ``"*"``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the target of a packet sent to the whole namespace
NAMESPACE = "*"
_ROOM = "#"


def room_target(room: str) -> str:
    """The target of packets sent to ``room`` (or to the socket whose sid it is)."""
    return _ROOM + room


def targets_of(rooms: tuple[str, ...]) -> tuple[str, ...]:
    """The targets of a packet sent to ``rooms`` (empty: the whole namespace), each once."""
    if not rooms:
        return (NAMESPACE,)
    return tuple(dict.fromkeys(map(room_target, rooms)))


def target_key(namespace: str, target: str) -> str:
    """``(namespace, target)`` as one string (a Redis key's tail, a MongoDB index value):
    the namespace is length-prefixed, so two different pairs never give one string."""
    return f"{len(namespace)}:{namespace}{target}"


@dataclass(frozen=True, slots=True)
class TargetRange:
    """One read of the target index: the packets of ``namespace`` sent to ``target``
    with ``after < seq <= until``, in seq order, at most ``limit``."""

    namespace: str
    target: str
    after: int
    until: int
    limit: int
