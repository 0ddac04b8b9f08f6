"""The client manager: store-then-deliver emits, ordered delivery, holds during restores.

Every recoverable emit is appended to the store first, and only once it is committed is it
sent to this node's sockets, with its offset as the last argument. A node delivers its
own committed packets from memory (it never reads back what it holds), as soon as every
lower seq has gone out; other nodes' packets arrive through the store's follower. Both
meet in :meth:`DurableManager._deliver`, which hands out seqs strictly in order, so the
order in which any node delivers is the order of the offsets (live order is replay
order: docs/design-rules.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from engineio import packet as eio_packet

from . import _socketio, metrics
from ._attempt import Hold, current_attempt
from ._cluster import LetGo, in_control_handler
from ._direct import FrameWriter
from ._lease import Lease
from ._offsets import format_offset
from ._packets import as_args, as_rooms, encode_event, encode_with_offset, set_offset
from ._recent import RecentHistory
from ._recovery import (
    DEFAULT_HISTORY_CACHE_BYTES,
    DEFAULT_LEASE_EXPIRY,
    DEFAULT_MAX_DISCONNECTION_DURATION,
)
from ._rooms import RoomsManager
from .exceptions import StoreError
from .stores.base import NewPacket, Session, Store, StoredPacket
from .stores.membership import membership_of

if TYPE_CHECKING:
    from ._server_cleanup import ServerCleanup

logger = logging.getLogger(__name__)

DELIVERY_WAIT = 10.0  # seconds an emit waits for its packet to reach local sockets
STORE_CLOSE_WAIT = 5.0  # seconds a stopping node gives the store to close
REPLAY_FRAMES_KEPT = 4096  # replayed packets' frames kept encoded (then forgotten at once)


class DurableManager(RoomsManager):
    """Client manager of :class:`durable_adapter.AsyncServer`; not used on its own.

    The top of three layers, as python-socketio layers its managers:
    :class:`~._cluster.ClusterManager` (operations on other nodes' sockets),
    :class:`~._rooms.RoomsManager` (rooms, room stays and the sessions written through),
    and this one: stored emits, their ordered delivery, and holds during restores.
    """

    def __init__(self, store: Store, *, recovery_namespaces: frozenset[str] | None,
                 build_session: Callable[[str, str], Awaitable[Session | None]],
                 let_go: LetGo,
                 on_lease_regained: Callable[[], Awaitable[None]],
                 lease_expiry: float = DEFAULT_LEASE_EXPIRY,
                 write_through: bool = True,
                 max_disconnection_duration: float = DEFAULT_MAX_DISCONNECTION_DURATION,
                 purge_window: float | None = None) -> None:
        """
        :param build_session: the session of a live socket as the store keeps it while
            it lives, None when it has none to store (the server reads its data).
        :param let_go: closes this node's socket of ``(namespace, pid hash)`` as a drop,
            for another node whose client reconnected there.
        :param on_lease_regained: checks which sessions are still this node's after its
            lease lapsed (run in a task of its own while renewals go on).
        :param max_disconnection_duration: the window this node serves; recorded
            beside its lease, where the cleanup reads it (SQL, Redis).
        :param purge_window: the ``max_disconnection_duration`` this node purges the
            store for while it runs (:mod:`._server_cleanup`); None: it does not.
        """
        super().__init__(store, let_go=let_go, recovery_namespaces=recovery_namespaces,
                         build_session=build_session, write_through=write_through)
        self.holds: dict[str, dict[str, Hold]] = {}
        self._waiters: dict[int, asyncio.Future[None]] = {}
        #: this node's committed packets not yet delivered (a lower seq of another node
        #: is still on its way), with their frames encoded at emit
        self._own: dict[int, tuple[StoredPacket, list[eio_packet.Packet] | None]] = {}
        #: (epoch, seq) -> the frame replays write directly (:meth:`replay_frame`)
        self._replay_frames: dict[tuple[str, int], tuple[str, bytes] | None] = {}
        self._started = False
        self._stopped = False
        self._start_lock = asyncio.Lock()
        self._deliver_lock = asyncio.Lock()
        #: the task inside :meth:`_deliver`: python-engineio can run the application's
        #: disconnect handler inline in one of its sends (a ping timeout found at send)
        self.delivering: asyncio.Task[Any] | None = None
        #: False once :meth:`stop_sending` ran (shutdown): no stored packet goes out
        self.sending = True
        #: frames per seq and a window of delivered packets, for replays (``_recent``)
        self.recent = RecentHistory(DEFAULT_HISTORY_CACHE_BYTES)
        #: this node's liveness, as other nodes see it in the store
        self.window = max_disconnection_duration
        self._on_lease_regained = on_lease_regained
        self.lease = Lease(store, self.host_id, lease_expiry, on_regained=self._lease_regained)
        #: writes frames to websockets without a writer wake-up (set by the server)
        self.direct: FrameWriter | None = None
        #: the purge this node runs, if any (started with the node)
        self.cleanup: ServerCleanup | None = None
        if purge_window is not None:
            from ._server_cleanup import ServerCleanup

            self.cleanup = ServerCleanup(store, max_disconnection_duration=purge_window)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and start following it; idempotent, called lazily."""
        if self._started:
            return
        if self._stopped:  # reopening would leave a store nobody closes
            raise StoreError("the server has shut down: nothing more is stored")
        async with self._start_lock:
            if self._started:
                return
            await self.store.open()
            try:
                # held before any session names this node as its owner
                await self.lease.start()
                await self._record_window()
                self.delivered = (await self.store.bounds()).top
                # the follower need not read what this node delivered from memory
                await self.store.follow(self._deliver, after=self.delivered,
                                        skip_delivered=lambda: self.delivered,
                                        on_reset=self._history_reset)
            except BaseException:
                await self.lease.stop(drop=False)
                await self.store.close()
                raise
            self._started = True
            if self.cleanup is not None:
                self.cleanup.start()
            metrics.watch(self)

    async def _record_window(self) -> None:
        """Note this node's window beside its lease (a store that can: SQL, Redis): the
        cleanup keeps packets for the largest among live nodes."""
        record = getattr(self.store, "record_window", None)
        if record is None:
            return
        try:
            await record(self.host_id, self.window)
        except Exception as exc:  # only the cleanup's retention depends on it
            logger.warning("could not record this node's recovery window: %s", exc,
                           extra={"action": "window_not_recorded"})

    async def _lease_regained(self) -> None:
        # a lease row purged during the lapse came back without the window
        await self._record_window()
        await self._on_lease_regained()

    async def stop_sending(self) -> None:
        """From now on no stored packet reaches a socket of this node (shutdown).

        Waits for the packet being delivered: ``delivered`` and ``last_sent`` then say
        exactly what each socket was sent, so a session saved afterwards is never behind
        its client. Emits waiting for their delivery return.
        """
        async with self._deliver_lock:
            self.sending = False
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def stop(self, *, drop_lease: bool = True) -> None:
        """Stop following and close the store, each step bounded (an outage must not
        keep a shutdown from ending). ``drop_lease``: give the lease up; only once the
        sessions were saved, otherwise it expires and other nodes take their
        written-through rows."""
        self._stopped = True
        await self.sessions.close()
        if self._started:
            self._started = False
            if self.cleanup is not None:
                await self.cleanup.stop()
            await metrics.unwatch(self)
            await self.lease.stop(drop=drop_lease)
            try:
                await asyncio.wait_for(self.store.close(), STORE_CLOSE_WAIT)
            except Exception:
                logger.warning("closing the store did not finish cleanly", exc_info=True)
        for waiter in self._waiters.values():
            waiter.cancel()
        self._waiters.clear()
        self._own.clear()

    @property
    def started(self) -> bool:
        return self._started

    # -- emit ------------------------------------------------------------------

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        volatile: bool = False,
        **kwargs: Any,
    ) -> None:
        room = to or room
        args = as_args(data)
        rooms, except_rooms = as_rooms(room), as_rooms(skip_sid)
        if callback is not None or volatile or not self.recovers(namespace):
            # not stored and no offset (protocol.md): sent live, still behind any hold
            await self.send_live_local(event, args, namespace, rooms, except_rooms, callback)
            single_local = len(rooms) == 1 and self._is_local(rooms[0], namespace)
            if not single_local and not kwargs.get("ignore_queue"):
                await self.start()
                await self.publish_live(event, args, namespace, rooms, except_rooms, callback)
            return
        # encoded once, before it is stored: a payload python-socketio cannot send (say
        # nested too deep) fails this emit, as it would in python-socketio, and never
        # reaches the history that every node and every replay reads; the frames are
        # reused for this node's own delivery, with the offset put in once it is known
        data = [event, *args]
        parts = encode_with_offset(self.server.packet_class, namespace, data)
        if parts is None:
            # not encoded yet (a packet class other than the JSON one): this node's
            # recent history keeps it to encode later, and the application may change
            # its objects after the emit returns; the store keeps it as of now, so must
            # every replay
            data = self.store.codec.copy(data)
        await self.start()
        packet = NewPacket(namespace=namespace, data=data, rooms=rooms,
                           except_rooms=except_rooms)
        seq = await self.store.append(packet)
        await self._deliver_own(StoredPacket(
            namespace=namespace, data=data, rooms=rooms, except_rooms=except_rooms,
            seq=seq, created_at=time.time()), parts)

    async def _deliver_own(self, stored: StoredPacket,
                           parts: list[eio_packet.Packet] | None) -> None:
        """Deliver a packet this node committed, from memory: at once when every lower
        seq has gone out, else once the follower brought the missing ones (which are
        other nodes'). Returns once it was handed to the local sockets, as a plain emit
        returns once it queued to them."""
        seq = stored.seq
        if seq <= self.delivered or not self._started or not self.sending:
            return  # the follower was first (or delivery stopped: shutdown)
        if parts is not None:
            parts = set_offset(parts, format_offset(self.store.epoch, seq))
        self._own[seq] = (stored, parts)
        if asyncio.current_task() is self.delivering:
            # emitted by a handler that one of the delivery's sends ran: that delivery
            # goes on with this packet once the send returns
            return
        async with self._deliver_lock:
            await self._deliver_locked(())
        if not in_control_handler.get():
            # the follower is busy running this very handler: it cannot bring what is
            # missing before the handler returns
            await self._wait_delivered(seq)

    async def _wait_delivered(self, seq: int) -> None:
        """Wait (bounded) until the follower brought the seqs below ``seq``."""
        if seq <= self.delivered or not self._started or not self.sending:
            return
        waiter = self._waiters.get(seq)
        if waiter is None:
            waiter = self._waiters[seq] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), DELIVERY_WAIT)
        except TimeoutError:
            # stored, so it will be delivered once the follower catches up; the emit
            # does not hang on a store that is slow to hand the missing seqs
            logger.warning("packet %d stored but not yet delivered after %.0f s",
                           seq, DELIVERY_WAIT)

    def _encode(self, namespace: str, data: list[Any], ack_id: int | None = None
                ) -> list[eio_packet.Packet]:
        return encode_event(self.server.packet_class, namespace, data, ack_id)

    def _targets(self, namespace: str, rooms: Sequence[str], except_rooms: Sequence[str],
                 stored: StoredPacket | None) -> list[tuple[str, str]]:
        """(sid, eio_sid) of local sockets a packet goes to, held sockets included."""
        excluded = {sid for sid, _ in self.get_participants(namespace, list(except_rooms))} \
            if except_rooms else set()
        targets = [(sid, eio_sid) for sid, eio_sid in
                   self.get_participants(namespace, list(rooms) if rooms else None)
                   if sid not in excluded]
        for hold in self.holds.get(namespace, {}).values():
            if not hold.registered and (stored is None or stored.is_for(hold.rooms)):
                if stored is not None or hold.sid in rooms:
                    targets.append((hold.sid, hold.eio_sid))
        return targets

    async def send_live_local(self, event: str, args: list[Any], namespace: str,
                         rooms: tuple[str, ...], except_rooms: tuple[str, ...],
                         callback: Any) -> None:
        shared = None if callback else self._encode(namespace, [event, *args])
        holds = self.holds.get(namespace, {})
        for sid, eio_sid in self._targets(namespace, rooms, except_rooms, None):
            parts = shared
            if parts is None:
                ack_id = self._generate_ack_id(sid, callback)
                parts = self._encode(namespace, [event, *args], ack_id)
            hold = holds.get(sid)
            if hold is not None:
                hold.held.append((None, parts))
                continue
            for part in parts:
                await self.server._send_eio_packet(eio_sid, part)

    # -- ordered delivery ------------------------------------------------------

    async def _deliver(self, packets: Sequence[StoredPacket]) -> None:
        """The store's listener: packets arrive once each, in seq order."""
        async with self._deliver_lock:
            await self._deliver_locked(packets)

    async def _deliver_locked(self, packets: Sequence[StoredPacket]) -> None:
        """Deliver the follower's ``packets`` merged with this node's own, in seq order.

        The follower's are authoritative: it may skip a seq that cannot be decoded, so
        reaching one of them delivers every own packet below it first, then it. Own
        packets beyond are delivered while they follow on without a hole.
        """
        if not self.sending:
            return
        self.delivering = asyncio.current_task()
        try:
            for stored in packets:
                if stored.seq <= self.delivered:
                    continue
                await self._deliver_own_below(stored.seq)
                own = self._own.pop(stored.seq, None)
                await self._deliver_seq(stored, own[1] if own else None)
            await self._deliver_own_below(None)
        finally:
            self.delivering = None
            self._release_waiters()

    async def _deliver_own_below(self, seq: int | None) -> None:
        """Deliver own packets: every one below ``seq`` (the follower's next, which may
        come after seqs it skipped), or with None those that follow on without a hole."""
        if seq is not None:
            while self._own and (lowest := min(self._own)) < seq:
                await self._deliver_seq(*self._own.pop(lowest))
            return
        while (following := self.delivered + 1) in self._own:
            await self._deliver_seq(*self._own.pop(following))

    async def _deliver_seq(self, stored: StoredPacket,
                           parts: list[eio_packet.Packet] | None) -> None:
        # advance first: a socket saved mid-packet records this packet as seen,
        # and a room joined or left from here on counts after it (stores.membership)
        self.delivered = stored.seq
        # this node's own come with their frames, encoded at emit: replays reuse them
        self.recent.add(stored, parts)
        if (self.recovers(stored.namespace) and stored.namespace in self.rooms) \
                or self.holds.get(stored.namespace):
            try:
                await self._deliver_one(stored, parts)
            except Exception:  # one bad packet must not stop the others
                logger.exception("delivering packet %d failed", stored.seq,
                                 extra={"action": "deliver_failed"})

    def encode_stored(self, stored: StoredPacket) -> list[eio_packet.Packet] | None:
        """A stored packet as sent (its offset last), or None when it cannot be encoded.

        Such a packet can reach no one: it is logged and skipped, never allowed to stop
        the delivery or the replay of the packets after it.
        """
        parts = self.recent.frames(stored.seq)  # the same for every recipient: once
        if parts is not None:
            return parts or None
        try:
            parts = self._encode(stored.namespace, [*stored.data,
                                                    format_offset(self.store.epoch, stored.seq)])
        except Exception:  # RecursionError, or a payload the packet class refuses
            logger.exception("packet %d cannot be encoded; skipped", stored.seq,
                             extra={"action": "encode_failed"})
        self.recent.keep_frames(stored.seq, parts)
        return parts

    def replay_frame(self, stored: StoredPacket) -> tuple[str, bytes] | None:
        """The one frame of a stored packet (text and UTF-8) to write directly
        (:mod:`._direct`), encoded once for every restore replaying it; None when it
        goes through python-engineio (binary, or direct writes off) or cannot be
        encoded."""
        key = (self.store.epoch, stored.seq)
        if key in self._replay_frames:
            return self._replay_frames[key]
        parts = self.encode_stored(stored)
        direct = self.direct_frame(parts) if parts is not None else None
        frame = None if direct is None else (direct[1], direct[2])
        if len(self._replay_frames) >= REPLAY_FRAMES_KEPT:
            self._replay_frames.clear()  # a storm's replays are of the same few packets
        self._replay_frames[key] = frame
        return frame

    async def _deliver_one(self, stored: StoredPacket,
                           parts: list[eio_packet.Packet] | None = None) -> None:
        namespace = stored.namespace
        targets = self._targets(namespace, stored.rooms, stored.except_rooms, stored)
        if not targets:
            return
        if parts is None:
            parts = self.encode_stored(stored)
        if parts is None:
            return
        if self.sessions.busy:
            # a socket is sent no packet ahead of its stored session: a room change
            # still being written lands first (bounded: a failing store delays once)
            unwritten = [(namespace, sid) for sid, _ in targets
                         if self.sessions.pending((namespace, sid))]
            if unwritten:
                await self.sessions.committed(unwritten, strict=False)
        holds = self.holds.get(namespace, {})
        sockets = self.sockets
        direct = self.direct_frame(parts)
        for sid, eio_sid in targets:
            hold = holds.get(sid)
            state = sockets.get(namespace, sid)
            if state is not None:
                if stored.seq <= (state.last_sent or 0):
                    continue  # restored from a node ahead of this one: the client has it
                state.last_sent = stored.seq
            if hold is not None:
                hold.held.append((stored.seq, parts))
                continue
            if direct is None:
                for part in parts:
                    await self.server._send_eio_packet(eio_sid, part)
            elif not direct[0](eio_sid, direct[1], direct[2]):
                # tried directly already: python-socketio's own send, through the queue
                await _socketio.queued_send(self.server, eio_sid, parts[0])

    def direct_frame(self, parts: list[eio_packet.Packet]
                      ) -> tuple[Callable[[str, str, bytes], bool], str, bytes] | None:
        """What writes a packet to one socket directly (:mod:`._direct`) and its frame,
        encoded once for every recipient; None when it goes through python-engineio."""
        direct = self.direct
        if direct is None or len(parts) != 1 or parts[0].binary or not direct.active():
            return None  # binary attachments go frame by frame through the queue
        frame = parts[0].encode()
        if not isinstance(frame, str):
            return None
        return direct.write, frame, frame.encode("utf-8")

    async def _history_reset(self, after: int) -> None:
        """The store's history was replaced (a Redis that lost its data): the packets after
        ``after`` of the new epoch come next; nothing of the old one is still to come."""
        async with self._deliver_lock:
            self.delivered = after
            self._own.clear()  # committed to the history that is gone
            self.recent.clear()
            for state in self.sockets:
                state.last_sent = None
                if state.membership is not None:
                    state.membership = state.membership.restarted(after)
            for waiter in self._waiters.values():  # their packets were lost with it
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    def _release_waiters(self) -> None:
        for seq in [s for s in self._waiters if s <= self.delivered]:
            waiter = self._waiters.pop(seq)
            if not waiter.done():
                waiter.set_result(None)

    # -- holds during a restore -------------------------------------------------

    def open_hold(self, namespace: str, sid: str, eio_sid: str, rooms: Iterable[str]) -> Hold:
        """Start holding packets for ``sid``; packets up to ``hold.upto`` are the replay's."""
        hold = Hold(sid=sid, eio_sid=eio_sid, rooms=frozenset(rooms), upto=self.delivered)
        self.holds.setdefault(namespace, {})[sid] = hold
        return hold

    def close_hold(self, namespace: str, sid: str) -> None:
        holds = self.holds.get(namespace)
        if holds is not None:
            holds.pop(sid, None)
            if not holds:
                del self.holds[namespace]

    async def release_hold(self, namespace: str, hold: Hold) -> None:
        """Send what was held (skipping what the replay already sent), then stop holding.

        From then on the socket is sent nothing at or below ``hold.upto``: this node may
        still be behind the node the client left, and will deliver packets it already has.
        """
        state = self.sockets.get(namespace, hold.sid)
        while hold.held:
            batch, hold.held = hold.held, []
            for seq, parts in batch:
                if seq is not None and seq <= hold.upto:
                    continue
                for part in parts:
                    await self.server._send_eio_packet(hold.eio_sid, part)
                if seq is not None and state is not None:
                    state.last_sent = max(state.last_sent or 0, seq)
        if hold.upto > self.delivered and state is not None:
            state.last_sent = max(state.last_sent or 0, hold.upto)
        self.close_hold(namespace, hold.sid)

    # -- the sid of a restored socket -----------------------------------------

    def _on_sid_minted(self, sid: str, namespace: str) -> None:
        """Runs where python-socketio registers a new sid, before the connect handler."""
        attempt = current_attempt.get()
        if attempt is not None:
            attempt.sid = sid  # the server frees what it kept for it if it is refused
        restore = attempt.restore if attempt else None
        state = self.sockets.get(namespace, sid)
        if restore is not None and restore.session.sid == sid and state is not None:
            session = restore.session
            state.start_seq, state.resume_seq = session.start_seq, restore.resume_seq
            state.recovered = True
            self.restore_rooms(state, session.rooms, membership_of(session))
            restore.hold.registered = True

    if _socketio.HAS_PRE_CONNECT:
        async def pre_connect(self, eio_sid: str, namespace: str) -> str | None:
            sid: str | None = await super().pre_connect(eio_sid, namespace)
            if sid is not None:
                self._on_sid_minted(sid, namespace)
            return sid
    else:  # python-socketio < 5.18: connect(eio_sid, namespace) mints the sid
        async def connect(self, eio_sid: str, namespace: str) -> str | None:
            sid: str | None = await super().connect(eio_sid, namespace)
            if sid is not None:
                self._on_sid_minted(sid, namespace)
            return sid

_socketio.check_manager_surface()
