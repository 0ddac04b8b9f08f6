"""The Redis Streams store: recovery and multi-node fan-out on the Redis you already run.

Offsets: a Lua script INCRBYs one counter per store and XADDs each packet with the
explicit entry id ``<seq>-0``, atomically. So the stream entry id *is* the seq, seqs are
dense, and stream order = counter order = the order every node delivers in. The
concurrent appends of one process go into one script call (up to ``batch_max``).

One stream for all namespaces, not one per namespace: the store interface numbers every
packet from one counter, so with a stream per namespace a node would follow N streams
and have to merge them back into counter order (a packet of ``/a`` could be committed
before one of ``/b`` with a lower seq still in flight). One stream keeps "stream order =
seq order" by construction and lets every node follow a single cursor with one XREAD;
a namespace's replay filters while paging (``XRANGE`` with ``COUNT``).

Epoch: a random id set once with the history. When the counter or the epoch vanish
(FLUSHALL, a Redis restart without persistence) the next script starts a new history
with a new epoch, and offsets of the old one are refused (history reset), never misread.
Each entry carries its epoch, so a reader also notices a reset between two calls, and
a follower starts over with a new history even when it began below its cursor
(:class:`.follow.RedisFollower`).

Retention is bounded by an approximate ``MAXLEN`` (memory) and :meth:`RedisStore.purge`
(age). ``bounds().purged_through`` is the first retained seq - 1, so a replay from an
offset older than the first entry is refused.

The target index (:mod:`..targets`): a zset per ``(namespace, target)`` holding the seqs
of its retained packets, written by the append script with the stream entry and trimmed
below the stream's head at each append to it; :meth:`RedisStore.purge` deletes the
zsets left with purged seqs only. A restore reads its targets' seqs and their entries in
one script (``READ_TARGETS``).

Control messages (cross-node operations) go into the same stream with the id
``<top>-<n>``: right after the packet that was the top when they were sent. A node that
enters a remote socket into a room and then emits to the room has the two applied in that
order everywhere; a second stream would need a merge by hand to promise that. The price:
they count against ``MAXLEN``. Nodes skip control messages older than their ``follow``.

Sessions are hashes, indexed per ``(namespace, sid)`` for
:meth:`RedisStore.delete_sessions`. A disconnected one has a TTL of its remaining
lifetime and is taken by a script. A live one (``owner`` set) has no TTL and
is listed in its owner's index; it goes with the owner's lease (a zset of leases), which
the take-over script and the purge read (:mod:`.scripts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from ..._codec import decode_value, encode_value
from ..._tasks import STOP_TIMEOUT
from ...exceptions import ConfigurationError, StoreError
from ..base import (
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
from ..batch_writer import BatchWriter
from ..delivery import decode_or_refuse
from ..errors import driver_errors
from ..membership import MembershipLog
from ..rules import check_new_packet, check_purge_args
from ..targets import TargetRange, targets_of
from . import scripts
from .cleanup_lock import RedisLock
from .follow import Entry, RedisFollower, entry_seq, split_id
from .scripts import parse_url

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "durable_adapter"
MAXLEN = 100_000  # packets kept in the stream (approximate: XADD MAXLEN ~)
BLOCK_MS = 5_000  # milliseconds one XREAD BLOCK waits
BATCH_MAX = 500  # packets per append script call
READ_PAGE = 1_000  # most entries one XRANGE returns
SOCKET_SLACK = 5.0  # seconds the follower's socket waits beyond BLOCK_MS before failing
SESSION_INDEX_GRACE = 3_600.0  # seconds an expired session stays in the purge index
TTL_MAX = 10 * 365 * 86_400.0  # seconds: a PEXPIRE argument stays far from overflowing

_NO_RETRY = Retry(NoBackoff(), 0)  # an append retried after a lost reply would duplicate


class RedisStore(Store):
    """Packets in a Redis stream, sessions in keys with a TTL; shared by every node.

    :param url: ``redis://[user:password@]host[:port][/db][?options]`` (or ``rediss://``),
                or a ready :class:`redis.asyncio.Redis` (``decode_responses=False``, and
                best without retries: a retried append can store a packet twice),
                which the store never closes. URL options ``prefix``, ``maxlen`` and
                ``block_ms`` set the parameters below.
    :param prefix: start of every key name (``{prefix}:v2:...``); one store per prefix.
    :param maxlen: stream entries kept (approximately: packets and control messages);
                   older ones are trimmed and offsets before them are refused.
    :param block_ms: milliseconds one ``XREAD BLOCK`` of the follower waits.
    :param batch_max: most packets appended by one script call.

    Usage::

        async with RedisStore("redis://127.0.0.1:6379/0?prefix=chat") as store:
            seq = await store.append(NewPacket(namespace="/", data=["hi"]))

    :attr:`following` is set while the follower is connected; :attr:`follower_name` is
    the ``CLIENT SETNAME`` of its connection.
    """

    shared = True  # every node and Emitter on the same Redis and prefix

    def __init__(
        self,
        url: str | Redis,
        *,
        prefix: str | None = None,
        maxlen: int | None = None,
        block_ms: int | None = None,
        batch_max: int = BATCH_MAX,
    ) -> None:
        given = {"prefix": prefix, "maxlen": maxlen, "block_ms": block_ms}
        options: dict[str, Any] = {}
        if isinstance(url, Redis):
            self._given_client: Redis | None = url
            if url.connection_pool.connection_kwargs.get("decode_responses"):
                raise ConfigurationError("pass a Redis client with decode_responses=False")
            self._url = None
        else:
            self._given_client = None
            self._url, options = parse_url(url)
        for name, value in given.items():
            if value is not None and name in options and options[name] != value:
                raise ConfigurationError(f"{name} is given twice: in the URL and as argument")
        settings: dict[str, Any] = {"prefix": DEFAULT_PREFIX, "maxlen": MAXLEN,
                                    "block_ms": BLOCK_MS}
        settings.update({k: v for k, v in given.items() if v is not None}, **options)
        for name in ("maxlen", "block_ms", "batch_max"):
            value = batch_max if name == "batch_max" else settings[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
        self.keys = scripts.Keys(settings["prefix"])
        self.maxlen: int = settings["maxlen"]
        self.block_ms: int = settings["block_ms"]
        self.batch_max = batch_max
        self.follower_name = f"{self.keys.prefix}-follower-{secrets.token_hex(4)}"
        #: set while the follower is connected
        self.following = asyncio.Event()
        self._redis: Redis | None = None
        self._epoch: str | None = None
        self._writer: BatchWriter | None = None
        self._follower_task: asyncio.Task[None] | None = None
        self._follower_client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    # -- lifecycle ---------------------------------------------------------------

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise StoreError("the store is not open")
        return self._redis

    def _where(self) -> str:
        if self._url is None:
            return f"a given Redis client (prefix {self.keys.prefix})"
        parts = urlsplit(self._url)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._where()} prefix={self.keys.prefix}>"

    async def open(self) -> None:
        if self._redis is not None:
            return
        client = self._given_client or Redis.from_url(self._url or "", retry=_NO_RETRY)
        self._redis = client
        self._scripts = {name: client.register_script(getattr(scripts, name)) for name in (
            "APPEND", "BOUNDS", "CONTROL", "SAVE_SESSIONS", "TAKE_SESSIONS", "OWNERS",
            "DELETE_SESSIONS", "PURGE_SESSIONS", "PURGE_OWNED", "READ_TARGETS",
            "PURGE_TARGETS")}
        try:
            with self._errors(f"cannot reach the store at {self._where()}"):
                await client.ping()
            # a first history starts at seq 0. Were this the first node back after a
            # FLUSHALL, nodes still running would hold cursors above the new seqs: their
            # followers notice the new epoch and start over at its beginning
            await self._bounds(use_time=False)
        except BaseException:
            self._redis = None
            if self._given_client is None:
                await client.aclose()
            raise
        self._writer = BatchWriter(self._append_batch, batch_max=self.batch_max,
                                   on_commit=lambda _: None, name=f"{self!r} writer")

    async def close(self) -> None:
        await self._stop_follower()
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.close()
        client, self._redis = self._redis, None
        if client is not None and self._given_client is None:
            await client.aclose()

    def _errors(self, message: str) -> contextlib.AbstractContextManager[None]:
        """Driver errors become :class:`StoreError`, keeping the cause."""
        return driver_errors(message, RedisError, OSError)

    async def _run(self, script: str, keys: list[str], args: list[Any], what: str) -> Any:
        with self._errors(f"{what} at {self._where()} failed"):
            return await self._scripts[script](keys=keys, args=args, client=self.redis)

    def _adopt(self, epoch: bytes | str) -> str:
        text = epoch.decode() if isinstance(epoch, bytes) else epoch
        if self._epoch is not None and text != self._epoch:
            logger.warning(
                "the Redis history was reset (epoch %s -> %s): offsets from before are "
                "refused", self._epoch, text, extra={"action": "history_reset"})
        self._epoch = text
        return text

    # -- packets ----------------------------------------------------------------

    async def append(self, packet: NewPacket) -> int:
        check_new_packet(packet)
        if self._writer is None:
            raise StoreError("the store is not open")
        payload = self.codec.encode({"d": list(packet.data), "r": list(packet.rooms),
                                    "x": list(packet.except_rooms)})
        return await self._writer.submit({"n": packet.namespace, "p": payload,
                                          "k": targets_of(packet.rooms)})

    async def _append_batch(self, rows: list[dict[str, Any]]) -> list[int]:
        keys = [*self.keys.history, self.keys.targets]
        index: dict[str, int] = {}  # target zset -> its index in KEYS (Lua: 1-based)
        args: list[Any] = [secrets.token_hex(8), "1", self.maxlen, len(rows)]
        for row in rows:
            namespace, targets = row["n"], row["k"]
            args += [namespace, row["p"], len(targets)]
            for target in targets:
                key = self.keys.target(namespace, target)
                if key not in index:
                    keys.append(key)
                    index[key] = len(keys)
                args.append(index[key])
        epoch, first = await self._run("APPEND", keys, args, "appending")
        self._adopt(epoch)
        return list(range(first, first + len(rows)))

    def _decode_packet(self, entry: Entry) -> StoredPacket:
        fields = entry[1]
        body = self.codec.decode(fields[b"p"])
        return StoredPacket(
            namespace=fields[b"n"].decode(), data=body["d"], rooms=tuple(body["r"]),
            except_rooms=tuple(body["x"]), seq=entry_seq(entry[0]),
            created_at=float(fields[b"t"]))

    async def read(
        self, *, after: int, limit: int, until: int | None = None, namespace: str | None = None
    ) -> list[StoredPacket]:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        out: list[StoredPacket] = []
        if until is not None and until <= after:
            return out
        end = "+" if until is None else f"{until}-0"
        page = READ_PAGE if namespace is not None else min(limit, READ_PAGE)
        wanted = None if namespace is None else namespace.encode()
        start = after + 1
        epoch = self.epoch.encode()
        while len(out) < limit:
            with self._errors(f"reading the store at {self._where()} failed"):
                entries: list[Entry] = await self.redis.xrange(  # type: ignore[assignment]
                    self.keys.packets, f"{start}-0", end, page)  # bytes: no decode_responses
            for entry in entries:
                if entry[1].get(b"e") != epoch:
                    raise StoreError("the Redis history was reset while reading it")
                if split_id(entry[0])[1]:  # a control message
                    continue
                if wanted is None or entry[1].get(b"n") == wanted:
                    # a replay refuses rather than leave a silent hole
                    out.append(decode_or_refuse(self._decode_packet, entry, entry_seq(entry[0])))
                    if len(out) == limit:
                        break
            if len(entries) < page:
                break
            start = entry_seq(entries[-1][0]) + 1
        return out

    async def read_targets(self, ranges: Sequence[TargetRange]) -> list[list[StoredPacket]]:
        if not ranges:
            return []
        keys = [self.keys.packets]
        index: dict[str, int] = {}
        args: list[Any] = [self.epoch]
        for wanted in ranges:
            key = self.keys.target(wanted.namespace, wanted.target)
            if key not in index:
                keys.append(key)
                index[key] = len(keys)
            args += [index[key], wanted.after, wanted.until, wanted.limit]
        seqs, entries = await self._run("READ_TARGETS", keys, args, "reading the store")
        epoch = self.epoch.encode()
        found: dict[int, StoredPacket] = {}
        for entry_id, flat in entries:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            if fields.get(b"e") != epoch:
                raise StoreError("the Redis history was reset while reading it")
            seq = entry_seq(entry_id)
            # a replay refuses rather than leave a silent hole
            found[seq] = decode_or_refuse(self._decode_packet, (entry_id, fields), seq)
        return [[found[seq] for seq in map(int, got) if seq in found] for got in seqs]

    async def _bounds(self, *, use_time: bool = True) -> HistoryBounds:
        epoch, top, purged = await self._run(
            "BOUNDS", self.keys.history, [secrets.token_hex(8), "1" if use_time else "0"],
            "reading the bounds")
        return HistoryBounds(epoch=self._adopt(epoch), top=top, purged_through=purged)

    async def bounds(self) -> HistoryBounds:
        return await self._bounds()

    # -- sessions ---------------------------------------------------------------

    async def save_sessions(self, sessions: Sequence[Session], *, node: str | None = None
                            ) -> None:
        """Every session in one script call (atomic)."""
        for session in sessions:
            self.codec.check_session_data(session.data)
        if not sessions:
            return
        now = time.time()
        keys = [self.keys.expiry, self.keys.owners]
        args: list[Any] = [node or "", self.keys.owned_prefix, repr(now - SESSION_INDEX_GRACE)]
        for session in sessions:
            membership = None if session.membership is None else session.membership.to_value()
            # the owner is the hash's "o" field, not in the blob: a node of the version
            # before it decodes the blob still
            fields = {k: v for k, v in session.__dict__.items() if k != "owner"}
            blob = self.codec.encode({**fields, "rooms": list(session.rooms),
                                     "membership": membership})
            keys += [self.keys.session(session.namespace, session.pid_hash),
                     self.keys.sid_index(session.namespace, session.sid)]
            args += [session.sid, session.pid_hash, blob, session.owner or "",
                     repr(session.expires_at),
                     max(1, int(min(session.expires_at - now, TTL_MAX) * 1000))]
        await self._run("SAVE_SESSIONS", keys, args, "saving sessions")

    def _decode_session(self, value: bytes, pid_hash: str) -> Session:
        try:
            fields = self.codec.decode(value)
            membership = fields.pop("membership", None)  # absent: saved by an older version
            if membership is not None:
                fields["membership"] = MembershipLog.from_value(membership)
            return Session(**{**fields, "rooms": tuple(fields["rooms"])})
        except Exception as exc:
            raise StoreError(f"the session of {pid_hash[:8]}... cannot be decoded") from exc

    async def take_sessions(self, requests: Sequence[TakeRequest], *, node: str, now: float,
                            window: float) -> list[TakeResult]:
        if not requests:
            return []
        keys = [self.keys.leases, self.keys.expiry, self.keys.owners, self.keys.epoch]
        keys += [self.keys.session(r.namespace, r.pid_hash) for r in requests]
        args = [node, repr(now), repr(window), self.keys.owned_prefix]
        args += [r.force_from or "" for r in requests]
        epoch, answers = await self._run("TAKE_SESSIONS", keys, args, "taking sessions")
        # the sessions' epochs are judged against the history as it is now (a Redis that
        # lost its history but kept its sessions refuses their offsets)
        if epoch is None:
            await self._bounds()
        else:
            self._adopt(epoch)
        results: list[TakeResult] = []
        for index, request in enumerate(requests):
            code, answer = answers[2 * index], answers[2 * index + 1]
            if code == 2:
                results.append(OwnedBy(answer.decode()))
            elif code == 1:
                results.append(self._taken(answer, request.pid_hash, node))
            else:
                results.append(None)
        return results

    def _taken(self, value: bytes, pid_hash: str, node: str) -> Session | None:
        try:
            return dataclasses.replace(self._decode_session(value, pid_hash), owner=node)
        except StoreError:  # one bad row must not fail the batch
            logger.exception("a taken session cannot be decoded; it cannot be recovered")
            return None

    async def owners(self, keys: Sequence[tuple[str, str]]
                     ) -> dict[tuple[str, str], str | None]:
        """One read-only script call."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        answers = await self._run(
            "OWNERS", [self.keys.session(namespace, pid_hash) for namespace, pid_hash in unique],
            [], "reading session owners")
        return {key: answer.decode() or None
                for key, answer in zip(unique, answers, strict=True) if answer is not None}

    async def renew_lease(self, node: str, *, now: float, expiry: float) -> None:
        with self._errors(f"renewing the lease at {self._where()} failed"):
            await self.redis.zadd(self.keys.leases, {node: now + expiry})

    async def record_window(self, node: str, seconds: float) -> None:
        """Note the ``max_disconnection_duration`` ``node`` serves (an optional ability:
        :func:`durable_adapter.cleanup.window_in_use` reads it)."""
        with self._errors(f"recording the window at {self._where()} failed"):
            await self.redis.hset(self.keys.retention, node, repr(float(seconds)))

    async def largest_window(self, now: float) -> float | None:
        """The largest ``max_disconnection_duration`` among the nodes alive at ``now``;
        the entries of nodes that have no lease any more are forgotten."""
        with self._errors(f"reading the windows at {self._where()} failed"):
            windows: dict[bytes, bytes] = await self.redis.hgetall(  # type: ignore[assignment]
                self.keys.retention)
            if not windows:
                return None
            names = list(windows)
            leases = await self.redis.zmscore(self.keys.leases, names)  # type: ignore[arg-type]
            gone = [name for name, expires in zip(names, leases, strict=True) if expires is None]
            if gone:
                await self.redis.hdel(self.keys.retention, *gone)
        alive = [float(windows[name]) for name, expires in zip(names, leases, strict=True)
                 if expires is not None and expires > now]
        return max(alive, default=None)

    async def drop_lease(self, node: str) -> None:
        with self._errors(f"dropping the lease at {self._where()} failed"):
            await self.redis.zrem(self.keys.leases, node)

    async def delete_sessions(self, sockets: Sequence[tuple[str, str]]) -> None:
        """Every socket's sessions in one script call (atomic)."""
        if not sockets:
            return
        keys = [self.keys.expiry]
        args: list[Any] = [self.keys.owned_prefix]
        for namespace, sid in dict.fromkeys(sockets):
            keys.append(self.keys.sid_index(namespace, sid))
            args += [self.keys.session_prefix(namespace), sid]
        await self._run("DELETE_SESSIONS", keys, args, "deleting sessions")

    # -- retention --------------------------------------------------------------

    async def purge(self, *, now: float, retention: float, batch_size: int = 1000) -> PurgeResult:
        """Delete expired sessions and trim packets older than ``retention`` seconds.

        Packets are trimmed from the head of the stream only (``XTRIM MINID``), so no
        hole opens above ``purged_through``. Their age is Redis' clock at append.
        """
        check_purge_args(retention, batch_size)
        sessions = 0
        while True:
            removed, handled = await self._run("PURGE_SESSIONS", [self.keys.expiry],
                                               [repr(now), batch_size], "purging sessions")
            sessions += removed
            if not handled:
                break
        while True:  # the sessions of dead nodes, then their leases
            removed, handled = await self._run(
                "PURGE_OWNED", [self.keys.leases, self.keys.owners],
                [repr(now - retention), batch_size, self.keys.owned_prefix], "purging sessions")
            sessions += removed
            if not handled:
                break
        packets, cutoff = 0, now - retention
        while True:
            with self._errors(f"purging packets at {self._where()} failed"):
                head: list[Entry] = await self.redis.xrange(  # type: ignore[assignment]
                    self.keys.packets, "-", "+", batch_size)
                old = [split_id(i) for i, fields in head if float(fields[b"t"]) < cutoff]
                if not old:
                    break
                seq, n = max(old)
                packets += await self.redis.xtrim(
                    self.keys.packets, minid=f"{seq}-{n + 1}", approximate=False)
        # target zsets left with purged packets only go with them
        while await self._run("PURGE_TARGETS", [*self.keys.history, self.keys.targets],
                              [batch_size], "purging the target index") >= batch_size:
            pass
        bounds = await self.bounds()
        return PurgeResult(sessions=sessions, packets=packets,
                           purged_through=bounds.purged_through)

    def cleanup_lock(self) -> RedisLock:
        """The lock keeping one purge active per store (an optional ability,
        :func:`~durable_adapter._cleanup_lock.lock_of`): a key with a TTL."""
        return RedisLock(lambda: self.redis, self.keys.cleanup_lock)

    # -- cross-node -------------------------------------------------------------

    async def publish_control(self, message: ControlMessage) -> None:
        blob = encode_value({"method": message.method, "origin": message.origin,
                             "body": message.body, "target": message.target})
        await self._run("CONTROL", self.keys.history, [secrets.token_hex(8), self.maxlen, blob],
                        "publishing a control message")

    @staticmethod
    def _decode_control(entry: Entry) -> ControlMessage:
        fields = decode_value(entry[1][b"m"])
        return ControlMessage(method=fields["method"], origin=fields["origin"],
                              body=fields["body"], target=fields["target"])

    # -- following --------------------------------------------------------------

    async def follow(self, listener: PacketListener, *, after: int,
                     skip_delivered: Callable[[], int] | None = None,
                     on_reset: HistoryResetListener | None = None) -> None:
        # skip_delivered: every entry is read once with XREAD anyway, the node's own too
        if self._redis is None:
            raise StoreError("the store is not open")
        await self._stop_follower()  # one follower per store: the new one replaces it
        with self._errors(f"following {self._where()} failed"):
            tip: list[Entry] = await self.redis.xrevrange(  # type: ignore[assignment]
                self.keys.packets, "+", "-", 1)
        # control messages are live only: those sent before now are not for this node
        control_floor = split_id(tip[0][0]) if tip else (0, 0)
        client = self._follower_client = self._dedicated_client()
        follower = RedisFollower(
            client=client, stream=self.keys.packets, epoch=self.epoch, cursor=after,
            control_floor=control_floor, block_ms=self.block_ms, listener=listener,
            control_listener=lambda: getattr(self, "_control_listener", None),
            reset_listener=on_reset,
            decode_packet=self._decode_packet, decode_control=self._decode_control,
            history=self._bounds, following=self.following)
        self._follower_task = asyncio.create_task(follower.run(), name=f"{self!r} follower")

    def _dedicated_client(self) -> Redis:
        """A client of its own for XREAD BLOCK, named, with a socket timeout beyond it."""
        pool = self.redis.connection_pool
        kwargs = {**pool.connection_kwargs, "client_name": self.follower_name,
                  "socket_timeout": self.block_ms / 1000 + SOCKET_SLACK, "retry": _NO_RETRY}
        return Redis(connection_pool=ConnectionPool(
            connection_class=pool.connection_class, max_connections=2, **kwargs))

    async def _stop_follower(self) -> None:
        task, self._follower_task = self._follower_task, None
        client, self._follower_client = self._follower_client, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, STOP_TIMEOUT)
        if client is not None:
            await client.aclose()
            await client.connection_pool.disconnect()
        self.following.clear()
