"""One record per socket of this node, and the registry that finds it by sid or by pid.

Everything recovery keeps about a live socket is on its :class:`SocketState`: the pid its
client holds, where its history starts, what it was sent, when it was in which room,
whether its connect handler accepted it and whether its session still belongs to this
node. The registry holds one record per ``(namespace, sid)``, plus an index by pid hash:
forgetting a socket is one removal, and a restore that gives a socket back puts back one
object.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ._offsets import hash_pid
from ._recovery import RecoveryFailure
from .stores.base import LIVE_EXPIRY, Session
from .stores.membership import MembershipLog

Key = tuple[str, str]  # (namespace, sid)


@dataclass(eq=False, kw_only=True)
class SocketState:
    """What this node keeps about one socket (one sid in one namespace)."""

    namespace: str
    sid: str
    eio_sid: str
    #: the rooms it is in, in join order (see ``DurableManager.get_rooms``)
    rooms: dict[str, None] = field(default_factory=dict)
    #: when it was in which room, in seq positions; None where recovery is off
    membership: MembershipLog | None = None
    #: the last stored packet sent to it
    last_sent: int | None = None
    #: the private id its client holds; None until its CONNECT reply carries one
    pid: str | None = None
    pid_hash: str | None = None
    #: the store's top at its first connect: no replay goes below it
    start_seq: int = 0
    #: where a recovery without an offset starts its replay
    resume_seq: int = 0
    recovered: bool = False
    #: why its client asked to recover and got this fresh socket instead
    failure: RecoveryFailure | None = None
    #: its connect handler accepted it: only from then on may its session be stored
    accepted: bool = False
    #: its session belongs to another node now: it is closed and never saved
    disowned: bool = False

    @property
    def key(self) -> Key:
        return self.namespace, self.sid

    @property
    def recoverable(self) -> bool:
        """Its session may be in the store: it holds a pid and was accepted here."""
        return self.pid is not None and self.accepted and not self.disowned

    def session(self, data: Any, *, epoch: str, delivered: int, duration: float,
                owner: str | None) -> Session:
        """Its session as of now: with ``owner``, as the store keeps it while the socket
        lives there (it never expires by time); without, as its drop leaves it."""
        assert self.pid_hash is not None, "a socket without a pid has no session"
        now = time.time()
        return Session(
            pid_hash=self.pid_hash, namespace=self.namespace, sid=self.sid,
            rooms=tuple(self.rooms), data=data, epoch=epoch, start_seq=self.start_seq,
            # above what this node delivered when restored from a node ahead of it
            position=max(delivered, self.last_sent or 0), last_sent_seq=self.last_sent,
            disconnected_at=now, expires_at=LIVE_EXPIRY if owner else now + duration,
            membership=self.membership.copy() if self.membership else MembershipLog(),
            resume_seq=self.resume_seq, owner=owner)


class SocketRegistry:
    """The :class:`SocketState` of every socket of this node."""

    def __init__(self) -> None:
        self._by_key: dict[Key, SocketState] = {}
        self._by_pid: dict[Key, SocketState] = {}  # (namespace, pid hash) -> its socket

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[SocketState]:
        return iter(list(self._by_key.values()))

    def get(self, namespace: str, sid: str) -> SocketState | None:
        return self._by_key.get((namespace, sid))

    def by_pid(self, namespace: str, pid_hash: str) -> SocketState | None:
        return self._by_pid.get((namespace, pid_hash))

    def add(self, state: SocketState) -> SocketState:
        """Register ``state`` (a new socket, or one given back after a refused restore)."""
        self._by_key[state.key] = state
        if state.pid_hash is not None:
            self._by_pid[(state.namespace, state.pid_hash)] = state
        return state

    def set_pid(self, state: SocketState, pid: str) -> None:
        state.pid, state.pid_hash = pid, hash_pid(pid)
        self._by_pid[(state.namespace, state.pid_hash)] = state

    def remove(self, namespace: str, sid: str) -> SocketState | None:
        """Forget a socket: its record and its pid go together."""
        state = self._by_key.pop((namespace, sid), None)
        if state is not None and state.pid_hash is not None \
                and self._by_pid.get((namespace, state.pid_hash)) is state:
            del self._by_pid[(namespace, state.pid_hash)]
        return state
