"""The rules every store implements the same way, apart from the records and the ABC of
:mod:`.base`: what :meth:`~.base.Store.append` and :meth:`~.base.Store.purge` check first,
and who gets a session a node asks to take (:func:`decide_take`, :func:`decide_takes`),
with :func:`take_one_by_one` for a store that takes one row at a time.

For implementers: the server and the applications never call these.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal

from ..exceptions import StoreError
from .base import NewPacket, OwnedBy, Session, TakeRequest, TakeResult


def check_new_packet(packet: NewPacket) -> None:
    """What every store's :meth:`.base.Store.append` checks first: a :class:`NewPacket` whose
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
    """The argument checks every :meth:`.base.Store.purge` starts with."""
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
    """What :meth:`.base.Store.take_sessions` does with a stored session, from its row and its
    owner's lease (``lease_expires`` None: no lease row, which counts as expired at 0).

    - disconnected (owner None): taken while ``expires_at > now``, else None (expired);
    - owned by ``node``: MINE (the caller checked its own sockets already);
    - ``force_from`` names the owner (it was asked to hand the session over and let
      go, or did not answer in time): taken, whatever its lease says (a node that let
      go and then shut down has dropped its lease);
    - owned by a node whose lease is alive: ``OwnedBy(owner)``;
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
    """:meth:`.base.Store.take_sessions` for a store that takes one row at a time (each take
    atomic on its own), with :func:`decide_takes`' rule for duplicates."""
    given: set[tuple[str, str]] = set()
    results: list[TakeResult] = []
    for request in requests:
        result = None if request.key in given else await take(request)
        if isinstance(result, Session):
            given.add(request.key)
        results.append(result)
    return results
