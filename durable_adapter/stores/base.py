"""The storage-agnostic interface every store implements, and the records crossing it.

Offsets: every stored packet gets a sequence number ``seq`` from one counter per store
(not per namespace). Sequence numbers are dense and assigned in commit order, so "every
packet after X" is ``seq > X`` and a follower that has delivered X knows X + 1 is next.
One counter (instead of one per namespace) lets each node follow the whole history with a
single cursor; the price is that all appends of a store serialise on one counter, which a
store amortises by batching the appends of one node into one transaction.

A store also has an ``epoch``: a random id of its history. A new database, a wiped
memory store or a Redis that lost its data gets a new epoch, and offsets carrying an old
epoch are refused instead of misread. A follower that finds its history replaced while
it runs (Redis) starts over at the new one's beginning, and first tells the ``on_reset``
listener given to :meth:`Store.follow`: seqs then start again.

:class:`Store`'s docstring lists the contract in one place; :mod:`.rules` holds what
every store implements alike.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from .._codec import DEFAULT_CODEC, Codec
from ..exceptions import StoreError
from .membership import MembershipLog
from .targets import TargetRange


@dataclass(frozen=True, kw_only=True)
class NewPacket:
    """An EVENT to store: ``data`` is ``[event, *args]`` (args may hold bytes).

    ``rooms`` empty means the whole namespace. ``except_rooms`` are rooms (a sid is a
    room) whose members must not receive it.
    """

    namespace: str
    data: list[Any]
    rooms: tuple[str, ...] = ()
    except_rooms: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class StoredPacket(NewPacket):
    """A packet as stored, with its sequence number and creation time (unix seconds)."""

    seq: int
    created_at: float

    def is_for(self, rooms: Sequence[str] | frozenset[str]) -> bool:
        """True when a socket in ``rooms`` (its own sid included) should receive it."""
        member_of = set(rooms)
        if self.except_rooms and member_of.intersection(self.except_rooms):
            return False
        return not self.rooms or bool(member_of.intersection(self.rooms))


@dataclass(frozen=True, kw_only=True)
class Session:
    """What a recoverable socket leaves behind when its transport dies.

    :param pid_hash: sha256 of the private id; the pid itself is never stored.
    :param start_seq: the store's top when the socket first connected.
    :param position: the last seq this node had delivered when the socket went away.
    :param last_sent_seq: the last stored packet actually sent to this socket, if any.
    :param membership: when the socket was in which of its rooms (a replay sends a
        packet only to a member at its seq); None in sessions saved before the log
        existed, whose ``rooms`` then count since ``start_seq``.
    :param resume_seq: where a recovery that brings no offset starts its replay once
        something was sent to the socket; None in sessions saved before it existed
        (``start_seq`` then).
    :param owner: the node whose socket is live with this session (its ``expires_at``
        is then :data:`LIVE_EXPIRY`); None once disconnected.
    """

    pid_hash: str
    namespace: str
    sid: str
    rooms: tuple[str, ...]
    data: Any
    epoch: str
    start_seq: int
    position: int
    last_sent_seq: int | None
    disconnected_at: float
    expires_at: float
    membership: MembershipLog | None = None
    resume_seq: int | None = None
    owner: str | None = None


#: ``expires_at`` of a live session: it never expires by time, only through its owner's
#: lease (a session whose owner died is recoverable for a window after the lease expired).
LIVE_EXPIRY = 1e18


@dataclass(frozen=True)
class OwnedBy:
    """:meth:`Store.take_sessions`' answer when a live node (valid lease) holds the session."""

    node: str


@dataclass(frozen=True)
class TakeRequest:
    """One session :meth:`Store.take_sessions` is asked to take. ``force_from``: the node
    that handed it over (or did not answer in time): taken from it even while its lease
    is alive."""

    namespace: str
    pid_hash: str
    force_from: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.pid_hash


TakeResult = Session | OwnedBy | None


@dataclass(frozen=True, kw_only=True)
class HistoryBounds:
    """Where the history stands: packets ``purged_through < seq <= top`` are retained."""

    epoch: str
    top: int
    purged_through: int


@dataclass(frozen=True, kw_only=True)
class PurgeResult:
    sessions: int = 0
    packets: int = 0
    purged_through: int = 0


#: Control methods about a session rather than about packets (a handover request and its
#: answer): a follower hands them over as soon as it reads them, ahead of packets a
#: lagging node still has to deliver, so a handover never waits behind a backlog.
UNORDERED_CONTROL = frozenset({"handover", "handover_done"})


@dataclass(frozen=True, kw_only=True)
class ControlMessage:
    """A cross-node instruction (disconnect a sid, enter/leave/close a room, an ack).

    ``origin`` is the node that sent it; a node ignores its own messages unless it is
    the ``target`` (acks go back to the node that asked for them).
    """

    method: str
    origin: str
    body: dict[str, Any] = field(default_factory=dict)
    target: str | None = None


class PacketListener(Protocol):
    """Receives committed packets, in seq order, each exactly once per node."""

    async def __call__(self, packets: Sequence[StoredPacket]) -> None: ...


ControlListener = Callable[[ControlMessage], Awaitable[None]]

#: Told, in order with the packets, that the history was replaced while following it:
#: the packets after the given seq, of the new epoch, come next.
HistoryResetListener = Callable[[int], Awaitable[None]]


class Store(abc.ABC):
    """A durable history of packets plus the sessions of sockets, live and disconnected.

    Usage::

        store = store_from_url("sqlite+aiosqlite:///app.db")
        async with store:
            seq = await store.append(NewPacket(namespace="/", data=["hi"]))

    **The contract**, one form per operation (each member's docstring has the details;
    the rules every store applies alike are in :mod:`.rules`):

    Capability and lifecycle

    - :attr:`shared` (class attribute): other processes can use this store; False only
      for a store in one process's memory.
    - :attr:`epoch`: the id of this history, known once :meth:`open` returned.
    - :attr:`codec`: payloads and session data as bytes, through the server's JSON
      module (python-socketio's ``json=``); every store encodes and decodes through it.
    - :meth:`open`: connect and set up the history (a second call does nothing); an
      unreachable store raises :class:`StoreError`. :meth:`close`: stop the follower and
      release what :meth:`open` acquired. ``async with store`` does both.

    Packets

    - :meth:`append`: store one packet durably and return its seq: dense, in commit
      order, from one counter per store. A failed write raises :class:`StoreError`.
    - :meth:`read`: the packets ``after < seq <= until`` (of one namespace if given) in
      seq order, at most ``limit``; one that cannot be decoded raises rather than leave a
      hole.
    - :meth:`read_targets`: for each :class:`~.targets.TargetRange`, the packets of one
      ``(namespace, target)`` in a seq range, through the store's target index; many
      ranges in one round trip. The index entries are written with their packet, in the
      same transaction, and purged with it.
    - :meth:`bounds`: the epoch, the top and the purge watermark.
    - :meth:`follow`: one follower per store, configured in the one call: each packet
      after ``after`` handed to the listener once, in seq order, this node's own too.

    Sessions, keyed by ``(namespace, pid_hash)``

    - :meth:`save_sessions`: upsert a batch in one write; with ``node``, only absent rows
      and rows ``node`` owns are written (one another node took, or that was released
      since, is left alone: the writer no longer owns it). Data that cannot be stored raises
      :class:`~durable_adapter.exceptions.SessionDataError` before anything is written.
    - :meth:`take_sessions`: make ``node`` the owner of each takeable session, atomically
      per row (:func:`.rules.decide_takes`): of concurrent takes of a row, one wins.
    - :meth:`release_session`: write one session back disconnected, unless another node
      owns its row now.
    - :meth:`owners`: read-only, one round trip: the owner (None: disconnected) of each
      stored session of the given keys; a key with no session is absent.
    - :meth:`delete_sessions`: forget every session, live or not, of each
      ``(namespace, sid)``, in one transaction.

    Leases of nodes

    - :meth:`renew_lease`: the node is alive until ``now + expiry``; :meth:`drop_lease`:
      it is gone (a clean shutdown). A session whose owner's lease expired can be taken
      within the recovery window after it.

    Retention

    - :meth:`purge`: delete in batches old packets (raising the watermark, never
      opening a hole above it), expired disconnected sessions, dead nodes' sessions and
      their leases; live sessions of live nodes stay.

    Between nodes

    - :meth:`publish_control`: send a :class:`ControlMessage` to the other nodes (a no-op
      where the store is not :attr:`shared`); :meth:`on_control`: register this node's
      receiver of theirs.
    """

    #: The capability "other processes can use this store": the nodes of a cluster, an
    #: :class:`~durable_adapter.Emitter`, the cleanup worker. True for SQL, Redis and
    #: MongoDB; False for :class:`~.memory.MemoryStore`, held in one process's memory. A
    #: store that is not shared has one node: no other node can take a session over (so
    #: none need be written through while its socket is live), and
    #: :meth:`publish_control` has nobody to send to. Every concrete store sets it.
    shared: ClassVar[bool]

    #: set by :meth:`open` (or earlier): the id of this store's history
    _epoch: str | None = None

    #: how packet payloads and session data become bytes: through the JSON module the
    #: server sends packets with (python-socketio's ``json=``); the server and the
    #: emitters set it before :meth:`open`
    codec: Codec = DEFAULT_CODEC

    @property
    def epoch(self) -> str:
        """The id of this history; valid after :meth:`open`."""
        if self._epoch is None:
            raise StoreError("the store is not open")
        return self._epoch

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and set up the history (a second call does nothing); a store that
        cannot be reached raises :class:`StoreError`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop followers and release what :meth:`open` acquired."""

    @abc.abstractmethod
    async def append(self, packet: NewPacket) -> int:
        """Store one packet durably and return its seq. A failed write raises."""

    @abc.abstractmethod
    async def read(
        self, *, after: int, limit: int, until: int | None = None, namespace: str | None = None
    ) -> list[StoredPacket]:
        """Packets with ``after < seq <= until`` (of ``namespace`` if given), in seq order."""

    @abc.abstractmethod
    async def read_targets(self, ranges: Sequence[TargetRange]) -> list[list[StoredPacket]]:
        """For each range, the packets of its namespace sent to its target (see
        :mod:`.targets`) with ``after < seq <= until``, in seq order, at most ``limit``;
        the answers in the order of ``ranges``, read in one round trip (one query, one
        script) where the store allows. A packet that cannot be decoded raises rather
        than leave a hole. Used by restores: what a socket may be owed, found by index.
        """

    @abc.abstractmethod
    async def bounds(self) -> HistoryBounds:
        """The current epoch, top and purge watermark."""

    @abc.abstractmethod
    async def save_sessions(self, sessions: Sequence[Session], *, node: str | None = None
                            ) -> None:
        """Upsert every session in one transaction (one script, one bulk write).

        With ``node``: absent rows and rows owned by ``node`` are written; a row owned by
        another node (taken over) or by nobody (released at a drop, maybe by a node that
        took it meanwhile) is left as it is: a node writes only what it still owns, so a
        node back from a lapsed lease never overwrites a newer state. Without:
        unconditional.
        """

    @abc.abstractmethod
    async def take_sessions(self, requests: Sequence[TakeRequest], *, node: str, now: float,
                            window: float) -> list[TakeResult]:
        """Make ``node`` the owner of each requested session, in one transaction (one
        script) where the store has them; the answers in the order of ``requests``.

        The rules are :func:`.rules.decide_take`'s. Each row is taken atomically: of
        concurrent takes of one row (across processes) exactly one gets a takeable
        session, the others see its new owner; of duplicate requests in one batch exactly
        one gets it (:func:`.rules.decide_takes`). Each answer is the session with
        ``owner=node``, :class:`OwnedBy` when a live node holds it, or None (absent,
        expired, or given to an earlier duplicate). On SQL and Redis a stored session that
        cannot be decoded is logged and answered None (it cannot be recovered) and fails
        no other request. A store that takes one row at a time uses
        :func:`.rules.take_one_by_one`.
        """

    @abc.abstractmethod
    async def owners(self, keys: Sequence[tuple[str, str]]
                     ) -> dict[tuple[str, str], str | None]:
        """The current owner of each stored session of ``keys`` (``(namespace, pid_hash)``
        pairs): the node whose socket is live with it, or None when it is disconnected.
        A key with no stored session is absent from the answer (a disconnected session
        that expired may be either: Redis drops it by its TTL). Read-only, and one round
        trip for the whole batch (one script, one find; SQL: one SELECT per 400 keys).
        """

    async def release_session(self, session: Session, *, node: str) -> None:
        """Write ``session`` as disconnected (owner None), unless another node owns its
        row now (a put-back after a failed restore, a drop)."""
        await self.save_sessions([dataclasses.replace(session, owner=None)], node=node)

    @abc.abstractmethod
    async def renew_lease(self, node: str, *, now: float, expiry: float) -> None:
        """Upsert this node's lease: it is alive until ``now + expiry``."""

    @abc.abstractmethod
    async def drop_lease(self, node: str) -> None:
        """Delete the lease (clean shutdown, once the node released its sessions)."""

    @abc.abstractmethod
    async def delete_sessions(self, sockets: Sequence[tuple[str, str]]) -> None:
        """Forget every stored session, live or disconnected, of each ``(namespace, sid)``
        in ``sockets`` (server-side disconnects: not recoverable), in one transaction
        (one script, one bulk write). Nothing stored for a pair is no error."""

    @abc.abstractmethod
    async def purge(self, *, now: float, retention: float, batch_size: int = 1000) -> PurgeResult:
        """Delete, in batches: packets older than ``retention`` seconds; disconnected
        sessions that expired; sessions owned by a node whose lease expired more than
        ``retention`` seconds ago (a missing lease counts as expired at 0); and leases
        expired more than ``retention`` ago that own no session. Live sessions of live
        nodes stay."""

    @abc.abstractmethod
    async def follow(self, listener: PacketListener, *, after: int,
                     skip_delivered: Callable[[], int] | None = None,
                     on_reset: HistoryResetListener | None = None) -> None:
        """Start handing packets with ``seq > after`` to ``listener`` in seq order, each
        once; a second call replaces the follower (configured anew, all in this call).

        Packets this node appends reach the listener too: a node delivers its own emits
        through the same ordered path as everyone else's. ``skip_delivered``: how far the
        listener got without the follower (every seq up to ``skip_delivered()`` was
        delivered already: a node delivers its own packets from memory), so a store that
        can skip reading them back does. ``on_reset``: told, in order with the packets,
        when the follower starts over on a replaced history (only a store whose history
        can vanish under running nodes does: Redis).
        """

    @abc.abstractmethod
    async def publish_control(self, message: ControlMessage) -> None:
        """Send ``message`` to the other nodes (their :meth:`on_control` listeners); SQL
        and Redis place it between the packets appended before and after it. A store
        that is not :attr:`shared` has no other node: its implementation is an explicit
        no-op."""

    def on_control(self, listener: ControlListener) -> None:
        """Register the receiver of other nodes' control messages."""
        self._control_listener = listener

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
