"""A store held in this process's memory: one node, nothing survives a restart.

Nothing outside the process can reach it, so its server purges it itself
(:mod:`durable_adapter._server_cleanup`); :meth:`MemoryStore.purge` yields to the event
loop between batches, so a large backlog never stalls the server.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence

from .base import (
    ControlMessage,
    HistoryBounds,
    HistoryResetListener,
    NewPacket,
    OwnedBy,
    PacketListener,
    PurgeResult,
    Session,
    Store,
    StoredPacket,
    TakeRequest,
    TakeResult,
)
from .rules import TAKE, check_purge_args, decide_takes
from .targets import TargetRange, targets_of


def _seq(packet: StoredPacket) -> int:
    return packet.seq


class MemoryStore(Store):
    """Packets in a deque, sessions in a dict. For tests and single-process servers.

    Appends are delivered to the follower synchronously, in seq order, before
    :meth:`append` returns, so the single node sees its own emits in commit order.
    """

    shared = False  # one process's memory: no other node, no Emitter, no cleanup worker

    def __init__(self, url: str = "memory://") -> None:
        self._epoch = secrets.token_hex(4)
        self._packets: deque[StoredPacket] = deque()
        #: (namespace, target) -> its retained packets, in seq order
        self._targets: dict[tuple[str, str], list[StoredPacket]] = {}
        self._sessions: dict[tuple[str, str], Session] = {}
        #: (namespace, sid) -> the pid hashes of its sessions, for deletes by sid
        self._by_sid: dict[tuple[str, str], set[str]] = {}
        self._leases: dict[str, float] = {}  # node -> expires_at
        self._top = 0
        self._purged_through = 0
        self._listener: PacketListener | None = None
        self._cursor = 0
        # appends that arrived while the listener was busy, delivered in order
        self._delivery_lock = asyncio.Lock()
        self._delivering: asyncio.Task[object] | None = None

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self._listener = None

    async def append(self, packet: NewPacket) -> int:
        self._top += 1
        stored = StoredPacket(
            namespace=packet.namespace,
            data=list(packet.data),
            rooms=tuple(packet.rooms),
            except_rooms=tuple(packet.except_rooms),
            seq=self._top,
            created_at=time.time(),
        )
        self._packets.append(stored)
        for target in targets_of(stored.rooms):
            self._targets.setdefault((stored.namespace, target), []).append(stored)
        await self._deliver_pending()
        return stored.seq

    async def _deliver_pending(self) -> None:
        if self._listener is None:
            return
        if self._delivering is asyncio.current_task():
            # appended by code the listener runs (an application handler): the loop
            # below this call delivers it next; waiting for the lock would wait forever
            return
        async with self._delivery_lock:
            self._delivering = asyncio.current_task()
            try:
                while self._listener is not None and self._cursor < self._top:
                    batch = await self.read(after=self._cursor, limit=500)
                    if not batch:  # purged while we were behind: skip the hole
                        self._cursor = self._top
                        break
                    self._cursor = batch[-1].seq
                    await self._listener(batch)
            finally:
                self._delivering = None

    def _index_after(self, seq: int) -> int:
        """Position in the deque of the first packet with a seq greater than ``seq``."""
        first = self._packets[0].seq if self._packets else self._top + 1
        return max(0, min(len(self._packets), seq + 1 - first))

    async def read(
        self, *, after: int, limit: int, until: int | None = None, namespace: str | None = None
    ) -> list[StoredPacket]:
        upper = self._top if until is None else min(until, self._top)
        out: list[StoredPacket] = []
        index = self._index_after(after)
        while index < len(self._packets) and len(out) < limit:
            stored = self._packets[index]
            if stored.seq > upper:
                break
            if namespace is None or stored.namespace == namespace:
                out.append(stored)
            index += 1
        return out

    async def read_targets(self, ranges: Sequence[TargetRange]) -> list[list[StoredPacket]]:
        answers: list[list[StoredPacket]] = []
        for wanted in ranges:
            found = self._targets.get((wanted.namespace, wanted.target), [])
            lo = bisect.bisect_right(found, wanted.after, key=_seq)
            hi = bisect.bisect_right(found, wanted.until, lo=lo, key=_seq)
            answers.append(found[lo:min(hi, lo + wanted.limit)])
        return answers

    async def bounds(self) -> HistoryBounds:
        return HistoryBounds(epoch=self.epoch, top=self._top, purged_through=self._purged_through)

    async def save_sessions(self, sessions: Sequence[Session], *, node: str | None = None
                            ) -> None:
        for session in sessions:
            self.codec.check_session_data(session.data)
        for session in sessions:
            key = (session.namespace, session.pid_hash)
            stored = self._sessions.get(key)
            if node is not None and stored is not None and stored.owner != node:
                continue  # taken over or released: not this node's row any more
            if stored is not None:
                self._forget(key)
            self._sessions[key] = dataclasses.replace(session, data=self.codec.copy(session.data))
            self._by_sid.setdefault((session.namespace, session.sid), set()).add(
                session.pid_hash)

    def _forget(self, key: tuple[str, str]) -> None:
        """Remove one stored session and its entry in the sid index."""
        session = self._sessions.pop(key)
        by_sid = (session.namespace, session.sid)
        pids = self._by_sid.get(by_sid)
        if pids is not None:
            pids.discard(session.pid_hash)
            if not pids:
                del self._by_sid[by_sid]

    async def take_sessions(self, requests: Sequence[TakeRequest], *, node: str, now: float,
                            window: float) -> list[TakeResult]:
        # no await between reading and writing: atomic for every server sharing this object
        found = {r.key: (s.owner, s.expires_at) for r in requests
                 if (s := self._sessions.get(r.key)) is not None}
        verdicts = decide_takes(requests, found, self._leases, node=node, now=now,
                                window=window)
        results: list[TakeResult] = []
        for request, verdict in zip(requests, verdicts, strict=True):
            if verdict is None or isinstance(verdict, OwnedBy):
                results.append(verdict)
                continue
            stored = self._sessions[request.key]
            if verdict == TAKE:
                stored = self._sessions[request.key] = dataclasses.replace(stored, owner=node)
            results.append(dataclasses.replace(stored, data=self.codec.copy(stored.data)))
        return results

    async def owners(self, keys: Sequence[tuple[str, str]]
                     ) -> dict[tuple[str, str], str | None]:
        return {key: stored.owner for key in keys
                if (stored := self._sessions.get(key)) is not None}

    async def renew_lease(self, node: str, *, now: float, expiry: float) -> None:
        self._leases[node] = now + expiry

    async def drop_lease(self, node: str) -> None:
        self._leases.pop(node, None)

    async def delete_sessions(self, sockets: Sequence[tuple[str, str]]) -> None:
        for namespace, sid in sockets:
            for pid_hash in list(self._by_sid.get((namespace, sid), ())):
                self._forget((namespace, pid_hash))

    async def purge(self, *, now: float, retention: float, batch_size: int = 1000) -> PurgeResult:
        """As every store's; between two batches of ``batch_size`` the event loop runs
        (the sessions looked at, the packets removed), so a server purging its own
        memory never stalls its sockets for long."""
        check_purge_args(retention, batch_size)
        cutoff = now - retention
        removed_sessions = 0
        keys = list(self._sessions)
        for start in range(0, len(keys), batch_size):
            for key in keys[start:start + batch_size]:
                s = self._sessions.get(key)
                if s is not None and (s.expires_at <= now if s.owner is None
                                      else self._leases.get(s.owner, 0.0) <= cutoff):
                    self._forget(key)
                    removed_sessions += 1
            await asyncio.sleep(0)
        owners = {s.owner for s in self._sessions.values()}
        for node, expires in list(self._leases.items()):
            if expires <= cutoff and node not in owners:
                del self._leases[node]
        removed_packets = 0
        while self._packets and self._packets[0].created_at < cutoff:
            for _ in range(batch_size):
                if not self._packets or self._packets[0].created_at >= cutoff:
                    break
                self._purged_through = self._packets.popleft().seq
                removed_packets += 1
            await asyncio.sleep(0)
        for key, found in list(self._targets.items()):  # index entries go with their packets
            del found[:bisect.bisect_right(found, self._purged_through, key=_seq)]
            if not found:
                del self._targets[key]
        return PurgeResult(sessions=removed_sessions, packets=removed_packets,
                           purged_through=self._purged_through)

    async def follow(self, listener: PacketListener, *, after: int,
                     skip_delivered: Callable[[], int] | None = None,
                     on_reset: HistoryResetListener | None = None) -> None:
        # skip_delivered: nothing is read back, appends are handed over as they are made;
        # on_reset: this history never changes under its node
        self._listener = listener
        self._cursor = after
        await self._deliver_pending()

    async def publish_control(self, message: ControlMessage) -> None:
        # not shared (Store.shared): there is no other node to send it to
        return None
