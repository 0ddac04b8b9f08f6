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
it runs (Redis) starts over at the new one's beginning, and first tells the listener
registered with :meth:`Store.on_history_reset`: seqs then start again.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..exceptions import StoreError
from .membership import MembershipLog


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
    """:meth:`Store.take_session`'s answer when a live node (valid lease) holds the session."""

    node: str


@dataclass(frozen=True)
class TakeRequest:
    """One session :meth:`Store.take_sessions` is asked to take (see
    :meth:`Store.take_session` for ``force_from``)."""

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


def check_new_packet(packet: NewPacket) -> None:
    """What every store's :meth:`Store.append` checks first: a :class:`NewPacket` whose
    namespace every store can keep (no NUL, which PostgreSQL's text refuses, and valid
    UTF-8), else :class:`StoreError`. Checked before the packet joins a batch, so it
    fails its own emit only."""
    if not isinstance(packet, NewPacket):
        raise TypeError(f"append() takes a NewPacket, got {type(packet).__name__}")
    namespace = packet.namespace
    if "\x00" in namespace:
        raise StoreError(f"namespace {namespace!r} cannot be stored: it contains NUL")
    try:
        namespace.encode()
    except UnicodeEncodeError as exc:
        raise StoreError(f"namespace {namespace!r} cannot be stored: {exc}") from None


def check_purge_args(retention: float, batch_size: int) -> None:
    """The argument checks every :meth:`Store.purge` starts with."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if retention < 0:
        raise ValueError(f"retention must be >= 0, got {retention!r}")


#: :func:`decide_take`'s verdicts besides OwnedBy and None: make the caller the owner
#: (``TAKE``), or the caller owns it already (``MINE``: returned as it is).
TAKE: Literal["take"] = "take"
MINE: Literal["mine"] = "mine"


def decide_take(*, owner: str | None, expires_at: float, lease_expires: float | None,
                node: str, now: float, window: float, force_from: str | None
                ) -> Literal["take", "mine"] | OwnedBy | None:
    """What :meth:`Store.take_session` does with a stored session, from its row and its
    owner's lease (``lease_expires`` None: no lease row, which counts as expired at 0).

    - disconnected (owner None): taken while ``expires_at > now``, else None (expired);
    - owned by ``node``: MINE (the caller checked its own sockets already);
    - owned by a node whose lease is alive: ``OwnedBy(owner)``, unless ``force_from``
      names it (it handed the session over, or did not answer in time): then taken;
    - owned by a node whose lease expired (killed): taken for ``window`` seconds after
      the lease expired (the session's last written state), None after.
    """
    if owner is None:
        return TAKE if expires_at > now else None
    if owner == node:
        return MINE
    if force_from == owner:
        return TAKE
    if lease_expires is not None and lease_expires > now:
        return OwnedBy(owner)
    return TAKE if (lease_expires or 0.0) + window > now else None


def decide_takes(requests: Sequence[TakeRequest],
                 found: Mapping[tuple[str, str], tuple[str | None, float]],
                 leases: Mapping[str, float], *, node: str, now: float, window: float
                 ) -> list[Literal["take", "mine"] | OwnedBy | None]:
    """:func:`decide_take` for each request of one batch, in order, given the stored
    rows' ``(owner, expires_at)`` by key (absent: no row) and the owners' leases (absent:
    no lease). A batch hands each row out once: a request for a row that an earlier
    request of the batch got is answered None (as a second restore of one session on
    one node is refused), so of duplicates exactly one gets the session."""
    given: set[tuple[str, str]] = set()
    verdicts: list[Literal["take", "mine"] | OwnedBy | None] = []
    for request in requests:
        row = found.get(request.key)
        if row is None or request.key in given:
            verdicts.append(None)
            continue
        owner, expires_at = row
        verdict = decide_take(
            owner=owner, expires_at=expires_at,
            lease_expires=None if owner is None else leases.get(owner),
            node=node, now=now, window=window, force_from=request.force_from)
        if verdict == TAKE or verdict == MINE:
            given.add(request.key)
        verdicts.append(verdict)
    return verdicts


async def take_one_by_one(requests: Sequence[TakeRequest],
                          take: Callable[[TakeRequest], Awaitable[TakeResult]]
                          ) -> list[TakeResult]:
    """:meth:`Store.take_sessions` for a store that takes one row at a time (each take
    atomic on its own), with :func:`decide_takes`' rule for duplicates."""
    given: set[tuple[str, str]] = set()
    results: list[TakeResult] = []
    for request in requests:
        result = None if request.key in given else await take(request)
        if isinstance(result, Session):
            given.add(request.key)
        results.append(result)
    return results


class PacketListener(Protocol):
    """Receives committed packets, in seq order, each exactly once per node."""

    async def __call__(self, packets: Sequence[StoredPacket]) -> None: ...


ControlListener = Callable[[ControlMessage], Awaitable[None]]

#: Told, in order with the packets, that the history was replaced while following it:
#: the packets after the given seq, of the new epoch, come next.
HistoryResetListener = Callable[[int], Awaitable[None]]


class Store(abc.ABC):
    """A durable history of packets plus the sessions of disconnected sockets.

    Usage::

        store = store_from_url("sqlite+aiosqlite:///app.db")
        async with store:
            seq = await store.append(NewPacket(namespace="/", data=["hi"]))
    """

    #: set by :meth:`open` (or earlier): the id of this store's history
    _epoch: str | None = None

    @property
    def epoch(self) -> str:
        """The id of this history; valid after :meth:`open`."""
        if self._epoch is None:
            raise StoreError("the store is not open")
        return self._epoch

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect; a store that cannot be reached raises :class:`StoreError`."""

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
    async def bounds(self) -> HistoryBounds:
        """The current epoch, top and purge watermark."""

    @abc.abstractmethod
    async def save_session(self, session: Session) -> None:
        """Store (or replace) the session for ``(namespace, pid_hash)``."""

    @abc.abstractmethod
    async def save_sessions(self, sessions: Sequence[Session], *, node: str | None = None
                            ) -> None:
        """Upsert every session in one transaction (one script, one bulk write).

        With ``node``: a session whose stored row is owned by another node (its owner is
        neither None nor ``node``: it was taken over) is left as it is; absent rows, rows
        owned by nobody and rows owned by ``node`` are written. Without: unconditional.
        """

    async def take_session(self, namespace: str, pid_hash: str, *, node: str, now: float,
                           window: float, force_from: str | None = None) -> TakeResult:
        """Make ``node`` the owner of the session ``(namespace, pid_hash)``, atomically.

        The rules are :func:`decide_take`'s. Of concurrent calls for one row (across
        processes) exactly one gets a takeable session; the others see its new owner.
        Returns the session with ``owner=node``, :class:`OwnedBy` when a live node holds
        it, or None (absent or expired). By default :meth:`take_sessions` of one request.
        """
        if type(self).take_sessions is Store.take_sessions:
            raise NotImplementedError(
                f"{type(self).__name__} implements neither take_session nor take_sessions")
        request = TakeRequest(namespace, pid_hash, force_from)
        (result,) = await self.take_sessions([request], node=node, now=now, window=window)
        return result

    async def take_sessions(self, requests: Sequence[TakeRequest], *, node: str, now: float,
                            window: float) -> list[TakeResult]:
        """:meth:`take_session` for many sessions at once, in one transaction (one
        script) where the store has them: each answer as :meth:`take_session` would
        give it, in the order of ``requests``; each row is taken atomically, and of
        duplicate requests in one batch exactly one gets the session
        (:func:`decide_takes`). On SQL and Redis a stored session that cannot be decoded
        is logged and answered None (it cannot be recovered) and fails no other request.

        A store implements this or :meth:`take_session`; by default each request is a
        :meth:`take_session` of its own.
        """
        if type(self).take_session is Store.take_session:
            raise NotImplementedError(
                f"{type(self).__name__} implements neither take_session nor take_sessions")
        return await take_one_by_one(requests, lambda request: self.take_session(
            request.namespace, request.pid_hash, node=node, now=now, window=window,
            force_from=request.force_from))

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
    async def claim_session(self, namespace: str, pid_hash: str, now: float) -> Session | None:
        """Atomically remove and return an unexpired session; ``None`` if absent or lost race."""

    @abc.abstractmethod
    async def delete_sessions(self, namespace: str, sid: str) -> None:
        """Forget every stored session of ``sid`` (server-side disconnect)."""

    async def delete_sessions_of(self, sockets: Sequence[tuple[str, str]]) -> None:
        """:meth:`delete_sessions` for each ``(namespace, sid)``; stores that can do it
        in one transaction override this (many sockets leaving at once)."""
        for namespace, sid in sockets:
            await self.delete_sessions(namespace, sid)

    @abc.abstractmethod
    async def purge(self, *, now: float, retention: float, batch_size: int = 1000) -> PurgeResult:
        """Delete, in batches: packets older than ``retention`` seconds; disconnected
        sessions that expired; sessions owned by a node whose lease expired more than
        ``retention`` seconds ago (a missing lease counts as expired at 0); and leases
        expired more than ``retention`` ago that own no session. Live sessions of live
        nodes stay."""

    @abc.abstractmethod
    async def follow(self, listener: PacketListener, *, after: int) -> None:
        """Start handing packets with ``seq > after`` to ``listener`` in seq order.

        Packets this node appends reach the listener too: a node delivers its own emits
        through the same ordered path as everyone else's.
        """

    def skip_delivered(self, position: Callable[[], int]) -> None:  # noqa: B027
        """Tell the follower how far its listener got without it: every seq up to
        ``position()`` was delivered already (a node delivers its own packets from
        memory), so a store that can skip reading them back does. Optional."""

    async def publish_control(self, message: ControlMessage) -> None:  # noqa: B027
        """Send ``message`` to the other nodes; single-node stores have none."""

    def on_control(self, listener: ControlListener) -> None:
        """Register the receiver of other nodes' control messages."""
        self._control_listener = listener

    def on_history_reset(self, listener: HistoryResetListener) -> None:
        """Register who is told when the follower starts over on a replaced history
        (only a store whose history can vanish under running nodes does: Redis)."""
        self._reset_listener = listener

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
