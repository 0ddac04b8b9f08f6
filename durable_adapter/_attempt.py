"""The records of one recovery attempt: what a CONNECT carrying a pid is doing.

A :class:`Hold` keeps the live packets of a socket being restored until its replay went
out; a :class:`Restore` is the claimed session and its replay; an :class:`Attempt` is
what one CONNECT got. python-socketio mints the sid and runs the connect handler inside
its own ``_handle_connect``: :data:`current_attempt` carries the attempt there.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from engineio import packet as eio_packet

from ._recovery import RecoveryFailure
from ._sockets import SocketState
from .stores.base import Session, StoredPacket


@dataclass(eq=False)
class Hold:
    """Packets for a socket being restored, kept until its replay has been sent.

    Until the restored sid is registered in the manager's rooms, packets are matched
    against the session's rooms; afterwards the manager's own rooms decide.
    """

    sid: str
    eio_sid: str
    rooms: frozenset[str]
    upto: int
    registered: bool = False
    held: list[tuple[int | None, list[eio_packet.Packet]]] = field(default_factory=list)


@dataclass(eq=False, kw_only=True)
class Takeover:
    """A live socket whose session a restore is taking: detached from its rooms and
    from the registry, not closed, so that a refused restore can give it back as it was."""

    state: SocketState

    @property
    def eio_sid(self) -> str:
        return self.state.eio_sid


@dataclass(eq=False, kw_only=True)
class Restore:
    """A recovery under way on one connection: the claimed session and its replay."""

    pid: str
    session: Session
    hold: Hold
    #: where the next recovery without an offset starts, once this one is accepted
    resume_seq: int
    #: the store's top when a session taken from a live row was checked, else None
    top: int | None = None
    takeover: Takeover | None = None
    replay: list[StoredPacket] = field(default_factory=list)
    sid_issued: bool = False
    data_restored: bool = False
    completed: bool = False


@dataclass(eq=False, kw_only=True)
class Attempt:
    """A CONNECT to a recovering namespace: the sid it got, and, when it carried a pid,
    either a Restore or the reason it was refused."""

    restore: Restore | None = None
    failure: RecoveryFailure | None = None
    sid: str | None = None
    #: (namespace, pid hash) this attempt is restoring: no other attempt of this node
    #: may restore it meanwhile
    restoring: tuple[str, str] | None = None


#: the recovery attempt of the CONNECT being handled in this task
current_attempt: ContextVar[Attempt | None] = ContextVar("durable_adapter_attempt", default=None)


