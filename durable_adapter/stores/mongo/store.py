"""The MongoDB store: PyMongo's async API, a capped packets collection, change streams.

**Experimental** until its suite has run against a real replica set: :meth:`MongoStore.open`
warns (:class:`~durable_adapter.exceptions.ExperimentalWarning`).

**Offsets.** One counter document per store: ``find_one_and_update({$inc: {top: 1}})``
(``w: "majority"``) hands out the seq, then the packet is inserted into the capped
collection with ``_id: seq``. The two writes are not atomic (capped collections cannot
join a multi-document transaction), so inserts can land out of seq order, and a writer
can die holding a seq. Seqs are still dense and each is stored once: ``_id`` is unique.

**Same order on every node.** Each node follows the packets collection with a change
stream and hands packets to its sockets strictly in seq order: an early arrival waits for
the seqs before it. A seq missing for ``gap_timeout`` seconds is filled with a tombstone
document ``_id: seq`` (a duplicate-key error means the real packet landed first, and it
is read). A late writer then gets the duplicate-key error and its append raises
:class:`StoreError`: nothing is lost silently, nothing is reordered. So every node
delivers the same dense sequence, and a client that saw offset 11 never receives 10.

**Replay without a scan.** "Everything after offset X" is ``find({_id: {$gt: X, $lte:
until}})`` sorted by ``_id`` with ``hint`` on the _id index: a range read from X on, never
a collection scan. Tombstones are skipped.

**Lost history.** The collection is the truth, the stream a fast path: after every
(re)start the follower reads ``_id > cursor``. A stream that cannot resume (its token left
the oplog) is reopened and the read fills the gap. If the capped collection overwrote
packets a node had not delivered, ``purged_through`` is raised over them, so recoveries
that could be incomplete are refused; :meth:`bounds` also derives it from the head of
the collection, read in insertion order too: eviction follows insertion order, not seq
order (:func:`.schema.evicted_through`). The epoch lives in the counter document: a new
database is a new epoch.

**Requirements.** A replica set (or sharded cluster) for change streams: a standalone
server is refused at :meth:`MongoStore.open` with the fix. Deleting old packets
(:meth:`purge`) from a capped collection needs MongoDB 5.0.7 or newer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, DeleteMany, ReplaceOne, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError
from pymongo.errors import ConfigurationError as MongoConfigurationError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from ... import metrics
from ..._tasks import STOP_TIMEOUT, finish_or_cancel
from ...exceptions import ConfigurationError, ExperimentalWarning, StoreError
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
from ..errors import driver_errors
from ..rules import MINE, check_new_packet, check_purge_args, decide_take, take_one_by_one
from ..targets import TargetRange
from . import schema, setup
from .follow import (
    READY_TIMEOUT,
    ControlFollower,
    PacketFollower,
    read_evicted_through,
    wait_ready,
)

logger = logging.getLogger(__name__)

EXPERIMENTAL = (
    "the MongoDB store is experimental: its test suite has not yet run against a real "
    "replica set"
)

CAPPED_SIZE = 256 * 1024 * 1024  # bytes of packet history kept by default
CONTROL_SIZE = 4 * 1024 * 1024  # bytes of the control collection
GAP_TIMEOUT = 10.0  # seconds a taken seq may stay unwritten before it is tombstoned
POLL_INTERVAL = 1.0  # seconds between the follower's reads of the collection
TAKE_ATTEMPTS = 10  # compare-and-set rounds of one take; each lost one means a new owner


class MongoStore(Store):
    """Packets, sessions and control messages in one MongoDB database.

    :param url: ``mongodb://`` or ``mongodb+srv://`` naming a replica set, or a ready
                :class:`AsyncMongoClient`, which the store never closes.
    :param database: the database; default: the URL's, else ``durable_adapter``.
    :param prefix: collection names start with ``<prefix>_``.
    :param capped_size_bytes: size of the capped packets collection (set at creation;
                              an existing collection keeps its size).
    :param control_size_bytes: size of the capped control-message collection.
    :param gap_timeout: seconds a missing seq is waited for before it is tombstoned.
    :param poll_interval: seconds between the follower's safety reads of the collection.
    :param auto_migrate: create missing collections and indexes at :meth:`open`.

    Usage::

        async with MongoStore("mongodb://db1,db2/app?replicaSet=rs0") as store:
            seq = await store.append(NewPacket(namespace="/", data=["hi"]))
    """

    shared = True  # every node and Emitter on the same database and prefix

    def __init__(
        self,
        url: str | AsyncMongoClient[Any],
        *,
        database: str | None = None,
        prefix: str = "durable_adapter",
        capped_size_bytes: int = CAPPED_SIZE,
        control_size_bytes: int = CONTROL_SIZE,
        gap_timeout: float = GAP_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
        auto_migrate: bool = True,
    ) -> None:
        if not isinstance(url, AsyncMongoClient):
            schema.check_url(url)
        if database is not None:
            schema.check_database(database)
        schema.check_prefix(prefix)
        schema.check_size("capped_size_bytes", capped_size_bytes)
        schema.check_size("control_size_bytes", control_size_bytes)
        schema.check_positive("gap_timeout", gap_timeout)
        schema.check_positive("poll_interval", poll_interval)
        self._given_client = url if isinstance(url, AsyncMongoClient) else None
        self._url = None if isinstance(url, AsyncMongoClient) else url
        self.database_name = database
        self.prefix = prefix
        self.capped_size_bytes = capped_size_bytes
        self.control_size_bytes = control_size_bytes
        self.gap_timeout = gap_timeout
        self.poll_interval = poll_interval
        self.auto_migrate = auto_migrate
        #: set while the packet follower runs
        self.following = asyncio.Event()
        self._client: AsyncMongoClient[Any] | None = None
        self._db: AsyncDatabase[Any] | None = None
        self._epoch: str | None = None
        self._tasks: dict[str, tuple[PacketFollower | ControlFollower, asyncio.Task[None]]] = {}

    # -- lifecycle ---------------------------------------------------------------

    def _where(self) -> str:
        return schema.redact(self._url) if self._url else "the given AsyncMongoClient"

    def _collection(self, name: str) -> AsyncCollection[Any]:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db.get_collection(
            f"{self.prefix}_{name}",
            write_concern=WriteConcern(w="majority"),
            read_concern=ReadConcern("majority"),
        )

    @property
    def _meta(self) -> AsyncCollection[Any]:
        return self._collection("meta")

    @property
    def _packets(self) -> AsyncCollection[Any]:
        return self._collection("packets")

    @property
    def _sessions(self) -> AsyncCollection[Any]:
        return self._collection("sessions")

    @property
    def _nodes(self) -> AsyncCollection[Any]:
        return self._collection("nodes")

    @property
    def _control(self) -> AsyncCollection[Any]:
        return self._collection("control")

    async def open(self) -> None:
        if self._client is not None:
            return
        warnings.warn(EXPERIMENTAL, ExperimentalWarning, stacklevel=2)
        try:
            client = self._given_client or AsyncMongoClient(self._url)
        except MongoConfigurationError as exc:
            raise ConfigurationError(f"bad MongoDB URL {self._where()}: {exc}") from exc
        try:
            with self._errors(f"cannot reach the store at {self._where()}"):
                schema.check_replica_set(await client.admin.command("hello"))
            name = self.database_name or client.get_default_database(
                schema.DEFAULT_DATABASE
            ).name
            self._client, self._db = client, client.get_database(name)
            if self.auto_migrate:
                await self.ensure_schema()
            else:
                await self._check_schema()
            self._epoch = await self._init_history()
            control = ControlFollower(self._control, self._control_receiver)
            task = self._start("control", control)
            # messages published once open() returned must reach this node
            await wait_ready(control.ready, task, READY_TIMEOUT)
        except BaseException:
            for task_name in list(self._tasks):
                await self._stop(task_name)
            self._client = self._db = None
            await self._release(client)
            raise

    async def ensure_schema(self) -> None:
        """Create the collections and indexes if missing; safe to run again, concurrently."""
        assert self._db is not None
        with self._errors(f"cannot create the collections at {self._where()}"):
            await setup.create_schema(
                self._db, self._packets, self._control, self._sessions, self._meta,
                packets_size=self.capped_size_bytes, control_size=self.control_size_bytes,
            )

    async def _check_schema(self) -> None:
        assert self._db is not None
        with self._errors(f"cannot read the collections at {self._where()}"):
            missing = await setup.missing_collections(
                self._db, [self._packets, self._control, self._sessions]
            )
        if missing:
            raise ConfigurationError(
                f"collections {missing} are missing at {self._where()}; run "
                f"`durable-adapter migrate --store <url>` first"
            )

    async def _init_history(self) -> str:
        with self._errors(f"cannot initialise the store at {self._where()}"):
            epoch = await setup.init_history(self._meta, self._packets)
        if epoch is None:
            raise StoreError(f"the history document vanished at {self._where()}")
        return epoch

    async def close(self) -> None:
        for name in list(self._tasks):
            await self._stop(name)
        client, self._client, self._db = self._client, None, None
        if client is not None:
            await self._release(client)

    async def _release(self, client: AsyncMongoClient[Any]) -> None:
        if client is not self._given_client:  # never close a client we did not create
            with contextlib.suppress(PyMongoError):
                await client.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._where()} prefix={self.prefix!r}>"

    def _errors(self, message: str) -> contextlib.AbstractContextManager[None]:
        """Driver errors become :class:`StoreError`, keeping the cause."""
        return driver_errors(message, PyMongoError)

    # -- packets ----------------------------------------------------------------

    async def append(self, packet: NewPacket) -> int:
        check_new_packet(packet)
        # a payload that cannot be stored fails here
        fields = schema.packet_fields(packet, self.codec)
        queued = metrics.clock()
        with self._errors(f"writing to the store at {self._where()} failed"):
            counter = await self._meta.find_one_and_update(
                {"_id": schema.HISTORY_ID},
                {"$inc": {"top": 1}},
                projection={"top": True},
                return_document=ReturnDocument.AFTER,
            )
            if counter is None:
                raise StoreError(f"the history document is missing at {self._where()}")
            seq = int(counter["top"])
            try:
                await self._packets.insert_one(schema.packet_document(seq, fields, time.time()))
            except DuplicateKeyError as exc:
                raise StoreError(
                    f"packet {seq} was not stored: it came later than gap_timeout "
                    f"({self.gap_timeout} s) and the followers have skipped its seq"
                ) from exc
        metrics.append_committed(queued)
        return seq

    async def read(
        self, *, after: int, limit: int, until: int | None = None, namespace: str | None = None
    ) -> list[StoredPacket]:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        with self._errors(f"reading the store at {self._where()} failed"):
            documents = await self._packets.find(
                schema.read_filter(after, until, namespace),
                sort=[("_id", ASCENDING)],
                limit=limit,
                hint=[("_id", ASCENDING)],
            ).to_list()
        return [schema.packet_from_document(document, self.codec) for document in documents]

    async def read_targets(self, ranges: Sequence[TargetRange]) -> list[list[StoredPacket]]:
        """One find per range through the target index, run concurrently."""
        async def one(wanted: TargetRange) -> list[StoredPacket]:
            documents = await self._packets.find(
                schema.target_filter(wanted), sort=[("_id", ASCENDING)],
                limit=wanted.limit, hint="targets").to_list()
            return [schema.packet_from_document(document) for document in documents]

        with self._errors(f"reading the store at {self._where()} failed"):
            return list(await asyncio.gather(*map(one, ranges)))

    async def bounds(self) -> HistoryBounds:
        with self._errors(f"reading the store at {self._where()} failed"):
            meta = await self._meta.find_one({"_id": schema.HISTORY_ID})
            if meta is None:
                raise StoreError(f"the history document is missing at {self._where()}")
            purged = int(meta["purged_through"])
            # what the capped collection evicted (in insertion order) is gone too
            purged = max(purged, await read_evicted_through(self._packets, self.gap_timeout))
        return HistoryBounds(epoch=str(meta["epoch"]), top=int(meta["top"]),
                             purged_through=purged)

    # -- sessions ---------------------------------------------------------------

    async def save_sessions(self, sessions: Sequence[Session], *, node: str | None = None
                            ) -> None:
        """One unordered bulk write; with ``node``, sessions another node took are skipped
        (their upsert fails on the duplicate ``_id``, which is what skipping means here)."""
        for session in sessions:
            self.codec.check_session_data(session.data)
        documents = {d["_id"]: d for d in
                     (schema.session_document(s, self.codec) for s in sessions)}
        if not documents:
            return
        requests = [ReplaceOne(schema.save_filter(key, node), document, upsert=True)
                    for key, document in documents.items()]
        with self._errors(f"writing to the store at {self._where()} failed"):
            try:
                await self._sessions.bulk_write(requests, ordered=False)
            except BulkWriteError as exc:
                if node is None or not schema.only_taken_over(exc.details):
                    raise

    async def take_sessions(self, requests: Sequence[TakeRequest], *, node: str, now: float,
                            window: float) -> list[TakeResult]:
        return await take_one_by_one(requests, lambda request: self._take(
            request, node=node, now=now, window=window))

    async def _take(self, request: TakeRequest, *, node: str, now: float, window: float
                    ) -> TakeResult:
        # read, decide, then compare-and-set the owner: of concurrent takes one sets it,
        # the others read again and see the new owner
        namespace, pid_hash, force_from = request.namespace, request.pid_hash, request.force_from
        key = schema.session_key(namespace, pid_hash)
        with self._errors(f"writing to the store at {self._where()} failed"):
            for _ in range(TAKE_ATTEMPTS):
                document = await self._sessions.find_one({"_id": key})
                if document is None:
                    return None
                owner = document.get("owner")
                lease = None
                if owner is not None and owner != node:
                    held = await self._nodes.find_one({"_id": owner})
                    lease = None if held is None else float(held["expires_ts"])
                verdict = decide_take(
                    owner=owner, expires_at=float(document["expires_ts"]), lease_expires=lease,
                    node=node, now=now, window=window, force_from=force_from)
                if verdict is None or isinstance(verdict, OwnedBy):
                    return verdict
                if verdict == MINE:
                    return schema.session_from_document(document, self.codec)
                taken = await self._sessions.find_one_and_update(
                    schema.take_filter(key, owner, now), schema.take_update(node),
                    return_document=ReturnDocument.AFTER)
                if taken is not None:
                    return schema.session_from_document(taken, self.codec)
        raise StoreError(f"taking the session {pid_hash[:8]}... lost {TAKE_ATTEMPTS} races")

    async def owners(self, keys: Sequence[tuple[str, str]]
                     ) -> dict[tuple[str, str], str | None]:
        """One find with ``$in`` on ``_id``, the owners only."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        with self._errors(f"reading the store at {self._where()} failed"):
            documents = await self._sessions.find(
                schema.owners_filter(unique), projection=schema.OWNER_FIELDS,
                batch_size=len(unique)).to_list()
        return schema.owners_from_documents(documents)

    async def renew_lease(self, node: str, *, now: float, expiry: float) -> None:
        with self._errors(f"writing to the store at {self._where()} failed"):
            await self._nodes.update_one(
                {"_id": node}, {"$set": {"expires_ts": now + expiry}}, upsert=True)

    async def drop_lease(self, node: str) -> None:
        with self._errors(f"writing to the store at {self._where()} failed"):
            await self._nodes.delete_one({"_id": node})

    async def delete_sessions(self, sockets: Sequence[tuple[str, str]]) -> None:
        """One unordered bulk write: a delete per socket, on the ``(ns, sid)`` index."""
        if not sockets:
            return
        requests = [DeleteMany({"ns": namespace, "sid": sid}, hint="ns_sid")
                    for namespace, sid in dict.fromkeys(sockets)]
        with self._errors(f"writing to the store at {self._where()} failed"):
            await self._sessions.bulk_write(requests, ordered=False)

    # -- retention --------------------------------------------------------------

    async def purge(self, *, now: float, retention: float, batch_size: int = 1000) -> PurgeResult:
        """Delete expired sessions (the TTL index does too) and a prefix of old packets."""
        check_purge_args(retention, batch_size)
        removed_sessions = removed_packets = 0
        with self._errors(f"purging the store at {self._where()} failed"):
            expired = {"owner": None, "expires_ts": {"$lte": now}}
            while ids := [d["_id"] for d in await self._sessions.find(
                    expired, projection={"_id": True}, limit=batch_size).to_list()]:
                result = await self._sessions.delete_many({"_id": {"$in": ids}, **expired})
                removed_sessions += result.deleted_count
            removed_sessions += await self._purge_dead_nodes(now - retention, batch_size)
            while (count := await self._purge_packets(now - retention, batch_size)) > 0:
                removed_packets += count
        bounds = await self.bounds()
        return PurgeResult(sessions=removed_sessions, packets=removed_packets,
                           purged_through=bounds.purged_through)

    async def _purge_dead_nodes(self, cutoff: float, batch_size: int) -> int:
        """Delete the sessions of nodes whose lease expired at or before ``cutoff``, then
        the leases expired by then that own nothing. Returns the sessions deleted."""
        owners = [o for o in await self._sessions.distinct("owner") if o is not None]
        leases = {d["_id"]: float(d["expires_ts"]) for d in await self._nodes.find(
            {"_id": {"$in": owners}}).to_list()}
        removed = 0
        if dead := schema.dead_owners(owners, leases, cutoff):
            # the owner again in the delete: a session taken over meanwhile stays
            owned = {"owner": {"$in": dead}}
            while ids := [d["_id"] for d in await self._sessions.find(
                    owned, projection={"_id": True}, limit=batch_size).to_list()]:
                result = await self._sessions.delete_many({"_id": {"$in": ids}, **owned})
                removed += result.deleted_count
        expired = [d["_id"] for d in await self._nodes.find(
            {"expires_ts": {"$lte": cutoff}}, projection={"_id": True}).to_list()]
        if expired:
            still = set(await self._sessions.distinct("owner", {"owner": {"$in": expired}}))
            await self._nodes.delete_many({"_id": {"$in": [n for n in expired if n not in still]},
                                           "expires_ts": {"$lte": cutoff}})
        return removed

    async def _purge_packets(self, cutoff: float, batch_size: int) -> int:
        """Delete one batch from the oldest seq on: no hole opens above purged_through."""
        head = await self._packets.find(
            {}, projection={"_id": True, "at": True}, sort=[("_id", ASCENDING)],
            limit=batch_size, hint=[("_id", ASCENDING)],
        ).to_list()
        old = [int(d["_id"]) for d in head if float(d["at"]) < cutoff]
        if not old:
            return 0
        through = max(old)
        # raised first: a reader never sees the hole without the watermark above it
        await self._meta.update_one(
            {"_id": schema.HISTORY_ID}, {"$max": {"purged_through": through}}
        )
        result = await self._packets.delete_many({"_id": {"$lte": through}})
        return result.deleted_count

    # -- following --------------------------------------------------------------

    async def follow(self, listener: PacketListener, *, after: int,
                     skip_delivered: Callable[[], int] | None = None,
                     on_reset: HistoryResetListener | None = None) -> None:
        # skip_delivered: the change stream brings every packet, the node's own too;
        # on_reset: a new database is a new epoch, refused at open, not replaced under it
        if self._db is None:
            raise StoreError("the store is not open")
        follower = PacketFollower(
            packets=self._packets, meta=self._meta, following=self.following,
            gap_timeout=self.gap_timeout, poll_interval=self.poll_interval,
            codec=self.codec,
        )
        await self._stop("packets")  # one follower per store: the new one replaces it
        self._start("packets", follower, listener, after)

    async def publish_control(self, message: ControlMessage) -> None:
        document = schema.control_document(message, time.time())
        with self._errors(f"writing to the store at {self._where()} failed"):
            await self._control.insert_one(document)

    def _control_receiver(self) -> Any:
        return getattr(self, "_control_listener", None)

    def _start(self, name: str, follower: PacketFollower | ControlFollower, *args: Any
               ) -> asyncio.Task[None]:
        task = asyncio.create_task(follower.run(*args), name=f"{self!r} {name} follower")
        self._tasks[name] = (follower, task)
        return task

    async def _stop(self, name: str) -> None:
        # ask first (a getMore returns within AWAIT_MS), cancel only after STOP_TIMEOUT
        entry = self._tasks.pop(name, None)
        if entry is None:
            return
        follower, task = entry
        follower.stop()
        try:
            await finish_or_cancel(task, STOP_TIMEOUT)
        except Exception:
            logger.exception("the %s follower failed", name)


async def ensure_schema(url: str, **options: Any) -> None:
    """Create the store's collections, indexes and history document at ``url``, if missing.

    What ``durable-adapter migrate --store mongodb://...`` runs; safe to run again.
    """
    store = MongoStore(url, **{**options, "auto_migrate": True})
    await store.open()
    await store.close()
