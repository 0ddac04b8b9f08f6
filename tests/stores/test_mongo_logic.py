"""The MongoDB store's logic that needs no server: in-order reassembly with gaps and
tombstones, standalone detection from a ``hello`` reply, options and URLs, documents
through real BSON, and failing cleanly when nothing answers.

Owners of many sessions (:meth:`MongoStore.owners`): one find, sent to a stand-in
collection that records it. The store against a replica set: the contract suite
(``conftest.STORE_FACTORIES``) and ``test_mongo_store.py``, when
``DURABLE_ADAPTER_MONGO_URL`` is set.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import warnings
from typing import Any

import bson
import pytest
from pymongo.errors import OperationFailure

from durable_adapter._codec import DEFAULT_CODEC
from durable_adapter.exceptions import ConfigurationError, ExperimentalWarning, StoreError
from durable_adapter.migrate import migrate
from durable_adapter.stores import store_from_url
from durable_adapter.stores.base import LIVE_EXPIRY, ControlMessage, NewPacket, Session
from durable_adapter.stores.membership import MembershipLog
from durable_adapter.stores.mongo import MongoStore
from durable_adapter.stores.mongo import follow as follow
from durable_adapter.stores.mongo import schema as schema

UNREACHABLE = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300"


def doc(seq: int) -> dict[str, Any]:
    return schema.packet_document(seq, schema.packet_fields(NewPacket(namespace="/", data=[
        "e", seq])), at=1.0)


def seqs(run: list[Any]) -> list[int]:
    return [int(d["_id"]) for d in run]


# -- reassembly ------------------------------------------------------------------------


def test_in_order_arrivals_are_released_at_once() -> None:
    order = follow.Reassembler(cursor=0)
    for seq in (1, 2, 3):
        order.offer(doc(seq), now=0)
    assert seqs(order.take(now=0)) == [1, 2, 3]
    assert order.cursor == 3 and not order.has_gap


def test_an_early_arrival_waits_for_the_seq_before_it() -> None:
    order = follow.Reassembler(cursor=10)
    order.offer(doc(12), now=0)
    order.offer(doc(13), now=0)
    assert order.take(now=0) == [] and order.has_gap
    order.offer(doc(11), now=1)
    assert seqs(order.take(now=1)) == [11, 12, 13]


def test_duplicates_and_old_seqs_are_ignored() -> None:
    order = follow.Reassembler(cursor=5)
    order.offer(doc(4), now=0)  # already delivered
    order.offer(doc(5), now=0)
    order.offer(doc(6), now=0)
    order.offer(doc(6), now=0)  # the stream and a catch-up read both bring it
    assert seqs(order.take(now=0)) == [6]
    order.offer(doc(6), now=0)
    assert order.take(now=0) == []


def test_a_gap_is_overdue_only_after_the_timeout() -> None:
    order = follow.Reassembler(cursor=0)
    order.offer(doc(2), now=100.0)
    assert order.overdue(now=104.9, timeout=5) is None
    assert order.overdue(now=105.0, timeout=5) == 1
    order.offer(schema.tombstone_document(1, at=0), now=105.0)
    assert seqs(order.take(now=105.0)) == [1, 2]
    assert order.overdue(now=1e9, timeout=5) is None


def test_the_counter_top_opens_a_gap_before_anything_later_arrives() -> None:
    order = follow.Reassembler(cursor=7)
    order.note_top(8, now=0.0)  # seq 8 taken, not yet written
    assert order.has_gap and order.overdue(now=2.0, timeout=2) == 8
    order.offer(doc(8), now=2.5)
    assert seqs(order.take(now=2.5)) == [8] and order.overdue(now=99, timeout=2) is None


def test_a_new_head_gap_is_timed_from_when_the_cursor_reached_it() -> None:
    order = follow.Reassembler(cursor=0)
    order.offer(doc(1), now=0)
    order.offer(doc(3), now=0)
    assert seqs(order.take(now=50)) == [1]
    assert order.overdue(now=54, timeout=5) is None  # seq 2 missing since t=50 only
    assert order.overdue(now=55, timeout=5) == 2


def test_skip_to_drops_what_is_no_longer_retained() -> None:
    order = follow.Reassembler(cursor=0)
    for seq in (3, 5, 6):
        order.offer(doc(seq), now=0)
    order.skip_to(4, now=1)
    assert order.cursor == 4 and set(order.pending) == {5, 6}
    assert seqs(order.take(now=1)) == [5, 6]
    order.skip_to(2, now=1)  # never backwards
    assert order.cursor == 6


def test_random_arrivals_with_dead_writers_deliver_one_dense_order() -> None:
    """Writers take seq s at time s/1000 and land it up to 0.5 s later, in any order; some
    die in between; the catch-up read brings some again. The follower's loop (offer, note
    the counter, tombstone what is overdue, take) releases every written seq once, in
    order, and tombstones exactly the dead ones."""
    rng = random.Random(4)
    top, timeout = 3000, 1.0
    dead = set(rng.sample(range(1, top + 1), 40))
    events = [(seq / 1000 + rng.uniform(0, 0.5), seq) for seq in range(1, top + 1)
              if seq not in dead]
    events += [(t + rng.uniform(0, 2), seq) for t, seq in rng.sample(events, 300)]
    events.sort(reverse=True)
    order = follow.Reassembler(cursor=0)
    released: list[int] = []
    tombstoned: list[int] = []
    now = 0.0
    while order.cursor < top:
        now += 0.01
        while events and events[-1][0] <= now:
            order.offer(doc(events.pop()[1]), now)
        order.note_top(min(top, int(now * 1000)), now)  # the counter: seqs taken so far
        if (seq := order.overdue(now, timeout)) is not None:
            assert seq in dead  # a live writer is never tombstoned
            tombstoned.append(seq)
            order.offer(schema.tombstone_document(seq, at=now), now)
        run = order.take(now)
        released += [int(d["_id"]) for d in run if not schema.is_tombstone(d)]
        assert now < 100
    assert released == sorted(set(range(1, top + 1)) - dead)
    assert sorted(tombstoned) == sorted(dead)


def test_pending_is_bounded() -> None:
    order = follow.Reassembler(cursor=0)
    for seq in range(2, follow.MAX_PENDING + 10):
        order.offer(doc(seq), now=0)
    assert len(order.pending) == follow.MAX_PENDING


def test_only_a_lost_history_drops_the_resume_token() -> None:
    lost = OperationFailure("Resume of change stream was not possible", code=286,
                            details={"codeName": "ChangeStreamHistoryLost"})
    fatal = OperationFailure("cannot resume", code=280)
    other = OperationFailure("not authorized", code=13, details={"codeName": "Unauthorized"})
    assert follow.cannot_resume(lost) and follow.cannot_resume(fatal)
    assert not follow.cannot_resume(other)


# -- deployment checks -----------------------------------------------------------------


def test_a_replica_set_member_and_a_mongos_are_accepted() -> None:
    schema.check_replica_set({"isWritablePrimary": True, "setName": "rs0", "ok": 1.0})
    schema.check_replica_set({"isWritablePrimary": True, "msg": "isdbgrid", "ok": 1.0})


def test_a_standalone_server_is_refused_with_the_fix() -> None:
    hello = {"isWritablePrimary": True, "maxWireVersion": 21, "ok": 1.0}
    with pytest.raises(ConfigurationError) as error:
        schema.check_replica_set(hello)
    message = str(error.value)
    assert "replica set" in message and "--replSet" in message and "rs.initiate()" in message


# -- options and URLs ------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"capped_size_bytes": 100},
    {"capped_size_bytes": True},
    {"control_size_bytes": 1.5},
    {"gap_timeout": 0},
    {"poll_interval": -1},
    {"prefix": "bad.prefix"},
    {"prefix": ""},
    {"database": "has space"},
    {"database": "a/b"},
])
def test_bad_options_are_refused_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        MongoStore("mongodb://localhost/?replicaSet=rs0", **options)


def test_only_mongodb_urls_are_taken() -> None:
    with pytest.raises(ConfigurationError):
        MongoStore("redis://localhost")
    assert isinstance(store_from_url("mongodb://h1,h2/app?replicaSet=rs0"), MongoStore)
    assert isinstance(store_from_url("mongodb+srv://cluster.example.com/app"), MongoStore)


def test_passwords_are_redacted() -> None:
    assert schema.redact("mongodb://ada:s3cret@h1:27017/app") == "mongodb://ada:***@h1:27017/app"
    assert schema.redact("mongodb://ada@h1/app") == "mongodb://ada@h1/app"
    assert schema.redact("mongodb://h1/app?replicaSet=rs0") == "mongodb://h1/app?replicaSet=rs0"
    store = MongoStore("mongodb+srv://ada:s3cret@cluster.example.com/app")
    assert "s3cret" not in repr(store)


@pytest.mark.parametrize(("url", "expected"), [
    ("mongodb://h1:1,h2:2/?replicaSet=rs0", "mongodb://h1:1,h2:2/t1?replicaSet=rs0"),
    ("mongodb://h1/old?w=1", "mongodb://h1/t1?w=1"),
    ("mongodb://h1", "mongodb://h1/t1"),
    ("mongodb://h1?replicaSet=rs0", "mongodb://h1/t1?replicaSet=rs0"),
])
def test_with_database(url: str, expected: str) -> None:
    assert schema.with_database(url, "t1") == expected


# -- documents through real BSON -------------------------------------------------------


def roundtrip(document: dict[str, Any]) -> dict[str, Any]:
    return bson.decode(bson.encode(document))


def test_packet_documents_round_trip() -> None:
    data = ["upload", b"\x00\xff", {"parts": [b"", "s", 1.5, None, True]}]
    sent = NewPacket(namespace="/f", data=data, rooms=("r1",), except_rooms=("sid9",))
    stored = schema.packet_from_document(
        roundtrip(schema.packet_document(42, schema.packet_fields(sent), at=1234.5)))
    assert (stored.seq, stored.data, stored.rooms, stored.except_rooms) == (
        42, data, ("r1",), ("sid9",))
    assert (stored.namespace, stored.created_at) == ("/f", 1234.5)


def test_replay_filter_is_a_range_on_the_id_index_without_tombstones() -> None:
    assert schema.read_filter(5, 9, "/chat") == {
        "_id": {"$gt": 5, "$lte": 9}, "tomb": {"$exists": False}, "ns": "/chat"}
    assert schema.read_filter(0, None, None) == {"_id": {"$gt": 0}, "tomb": {"$exists": False}}
    assert schema.is_tombstone(roundtrip(schema.tombstone_document(3, at=1.0)))
    assert not schema.is_tombstone(roundtrip(doc(3)))


def test_session_documents_round_trip_exactly() -> None:
    now = time.time()
    session = Session(
        pid_hash="ab" * 32, namespace="/chat", sid="sid1", rooms=("sid1", "r"),
        data={"user": "ada", "avatar": b"\x89PNG"}, epoch="e" * 16, start_seq=3,
        position=9, last_sent_seq=None, disconnected_at=now, expires_at=now + 0.123456,
    )
    document = roundtrip(schema.session_document(session))
    assert document["_id"] == schema.session_key("/chat", "ab" * 32)
    assert document["expires_at"].year >= 2024  # a BSON date: the TTL index applies
    assert schema.session_from_document(document) == session
    sent = Session(**{**session.__dict__, "last_sent_seq": 8})
    assert schema.session_from_document(roundtrip(schema.session_document(sent))) == sent
    # room names with "." or "$" are values, never keys of the document
    logged = Session(**{**session.__dict__, "membership": MembershipLog(
        since=2, rooms={"a.b": [(3, 5)], "$r": [(4, None)]})})
    assert schema.session_from_document(roundtrip(schema.session_document(logged))) == logged
    older = {k: v for k, v in schema.session_document(session).items()
             if k not in ("membership", "resume_seq")}
    assert schema.session_from_document(roundtrip(older)) == session  # saved before the log
    resumed = Session(**{**session.__dict__, "resume_seq": 7})
    assert schema.session_from_document(roundtrip(schema.session_document(resumed))) == resumed


def test_a_live_session_has_no_ttl_date_and_keeps_its_owner() -> None:
    live = Session(
        pid_hash="ab" * 32, namespace="/", sid="sid1", rooms=("sid1",), data=None, epoch="e",
        start_seq=0, position=0, last_sent_seq=None, disconnected_at=0.0,
        expires_at=LIVE_EXPIRY, owner="node-1")
    document = roundtrip(schema.session_document(live))
    assert "expires_at" not in document  # the TTL index never deletes it
    assert document["owner"] == "node-1" and document["expires_ts"] == LIVE_EXPIRY
    assert schema.session_from_document(document) == live
    # owned with an ordinary expiry (just taken): no date either, it goes with the lease
    taken = Session(**{**live.__dict__, "expires_at": 2e9})
    assert "expires_at" not in schema.session_document(taken)
    dropped = Session(**{**taken.__dict__, "owner": None})
    document = roundtrip(schema.session_document(dropped))
    assert document["expires_at"].year == 2033 and document["owner"] is None
    assert schema.session_from_document(document) == dropped
    # disconnected but beyond any date: kept, not a crash
    assert "expires_at" not in schema.session_document(Session(**{**live.__dict__,
                                                                   "owner": None}))


def test_a_conditional_save_matches_only_rows_nobody_else_owns() -> None:
    assert schema.save_filter("k", None) == {"_id": "k"}
    assert schema.save_filter("k", "n1") == {"_id": "k", "owner": "n1"}
    taken = {"writeErrors": [{"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"}],
             "writeConcernErrors": []}
    assert schema.only_taken_over(taken)
    other = {"writeErrors": [{"index": 0, "code": 11000}, {"index": 1, "code": 2}]}
    assert not schema.only_taken_over(other)
    concern = {"writeErrors": [], "writeConcernErrors": [{"code": 64}]}
    assert not schema.only_taken_over(concern)


def test_a_take_compares_and_sets_the_owner_it_decided_on() -> None:
    assert schema.take_filter("k", None, 5.0) == {
        "_id": "k", "owner": None, "expires_ts": {"$gt": 5.0}}
    assert schema.take_filter("k", "dead", 5.0) == {"_id": "k", "owner": "dead"}
    assert schema.take_update("n2") == {"$set": {"owner": "n2"}, "$unset": {"expires_at": ""}}


def _projected(document: dict[str, Any]) -> dict[str, Any]:
    """What the server returns of ``document`` under :data:`schema.OWNER_FIELDS`."""
    return {k: v for k, v in roundtrip(document).items() if schema.OWNER_FIELDS.get(k)}


def _stored(pid_hash: str, namespace: str, owner: str | None) -> Session:
    return Session(
        pid_hash=pid_hash, namespace=namespace, sid="sid1", rooms=("sid1",), data=None,
        epoch="e", start_seq=0, position=0, last_sent_seq=None, disconnected_at=0.0,
        expires_at=LIVE_EXPIRY if owner else time.time() + 60, owner=owner)


def test_owners_are_read_with_one_in_on_the_id_and_mapped_back_to_keys() -> None:
    keys = [("/", "ab" * 32), ("/chat", "ab" * 32), ("/", "cd" * 32)]
    assert schema.owners_filter(keys) == {"_id": {"$in": [
        schema.session_key(namespace, pid_hash) for namespace, pid_hash in keys]}}
    documents = [schema.session_document(_stored("ab" * 32, "/", "node-1")),
                 schema.session_document(_stored("ab" * 32, "/chat", None))]
    older = {k: v for k, v in schema.session_document(_stored("cd" * 32, "/", None)).items()
             if k != "owner"}  # saved before owners were stored
    found = [_projected(d) for d in (*documents, older)]
    assert all("data" not in d and "_id" not in d for d in found)  # the owners only
    assert schema.owners_from_documents(found) == {
        ("/", "ab" * 32): "node-1", ("/chat", "ab" * 32): None, ("/", "cd" * 32): None}


class _Found:
    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.documents = documents

    async def to_list(self) -> list[dict[str, Any]]:
        return self.documents


class _Sessions:
    """A sessions collection that records the finds sent to it (no server)."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.documents = documents
        self.finds: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def find(self, query: dict[str, Any], **options: Any) -> _Found:
        self.finds.append((query, options))
        wanted = set(query["_id"]["$in"])
        return _Found([_projected(d) for d in self.documents if d["_id"] in wanted])


async def test_owners_of_a_batch_are_one_find_and_change_nothing() -> None:
    store = MongoStore("mongodb://127.0.0.1:1/?replicaSet=rs0")
    assert await store.owners([]) == {}  # nothing asked: no query, not even an open store
    sessions = _Sessions([schema.session_document(_stored(f"{i:064x}", "/", owner))
                          for i, owner in enumerate(["n1", None, "n2"])])
    store._collection = lambda name: sessions  # type: ignore[assignment,method-assign,return-value]
    keys = [("/", f"{i:064x}") for i in (0, 1, 2, 3, 0)]
    assert await store.owners(keys) == {("/", f"{0:064x}"): "n1", ("/", f"{1:064x}"): None,
                                        ("/", f"{2:064x}"): "n2"}
    ((query, options),) = sessions.finds  # one find for the whole batch
    assert query == schema.owners_filter([("/", f"{i:064x}") for i in range(4)])
    assert options["projection"] == schema.OWNER_FIELDS


def test_dead_owners_are_those_whose_lease_expired_by_the_cutoff() -> None:
    leases = {"alive": 200.0, "dead": 100.0, "edge": 150.0}
    assert schema.dead_owners(["alive", "dead", "edge", "ghost"], leases, cutoff=150.0) == [
        "dead", "edge", "ghost"]  # ghost: no lease, dead since 0


def test_control_documents_round_trip() -> None:
    message = ControlMessage(method="emit_live", origin="n1", target=None,
                             body={"args": "abc", "rooms": ["r"], "blob": b"\x01"})
    assert schema.control_from_document(roundtrip(schema.control_document(message, 1.0))
                                        ) == message


# -- no server -------------------------------------------------------------------------


async def settle_driver_sockets() -> None:
    """Collect the socket of a connect attempt that ``client.close()`` cancelled.

    PyMongo (4.20.1) closes a failed connect's socket on OSError and timeouts, but not when
    the monitor task is cancelled mid-connect; it is then left to the garbage collector,
    which would report it (as a ResourceWarning) in a later, unrelated test.
    """
    await asyncio.sleep(0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


async def test_an_unreachable_server_fails_open_quickly_and_cleanly() -> None:
    before = asyncio.all_tasks()
    store = MongoStore(UNREACHABLE)
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach") as error:
        await asyncio.wait_for(store.open(), 10)
    assert time.monotonic() - started < 5
    assert error.value.__cause__ is not None
    with pytest.raises(StoreError, match="not open"):
        _ = store.epoch
    with pytest.raises(StoreError, match="cannot reach"):  # a failed open left nothing open
        await asyncio.wait_for(store.open(), 10)
    await store.close()  # nothing to release, and no error
    await settle_driver_sockets()
    assert {t for t in asyncio.all_tasks() - before if not t.done()} == set()


async def test_migrate_sends_mongodb_urls_to_the_mongo_store() -> None:
    with pytest.raises(StoreError, match="cannot reach"):
        await asyncio.wait_for(migrate(UNREACHABLE), 10)
    await settle_driver_sockets()


# -- eviction in insertion order -------------------------------------------------------


def test_a_seq_evicted_before_a_lower_one_is_reported_gone() -> None:
    """Seq 10 was inserted before 9 (two writers); the capped collection evicts in
    insertion order, so 10 is gone while 9 stays: "everything after 8" is incomplete."""
    retained = [(9, 100.0), *((seq, 100.0) for seq in range(11, 21))]
    oldest_inserts = [9, *range(11, 21)]
    gone = schema.evicted_through(retained, max(oldest_inserts), settled_before=200.0)
    assert gone == 10
    assert retained[0][0] - 1 == 8  # what bounds() reported from the oldest _id alone


def test_a_seq_still_in_flight_is_not_reported_gone() -> None:
    # 3 and 5 taken, still being inserted: the seqs above them were written just now
    young = [(1, 99.0), (2, 99.0), (4, 99.5), (6, 99.9)]
    assert schema.evicted_through(young, horizon=6, settled_before=90.0) == 0
    # far above the oldest insertions: a writer at the top of the history
    top = [(seq, 10.0) for seq in range(1, 501) if seq != 450]
    assert schema.evicted_through(top, horizon=100, settled_before=90.0) == 0
    assert schema.evicted_through([], horizon=0, settled_before=0.0) == -1


def test_random_writers_and_eviction_never_report_a_lost_seq_as_retained() -> None:
    """Seq s is taken at time s and inserted up to 30 later, so inserts land out of
    order; a capped collection of 300 documents evicts in insertion order; no writer
    holds a seq longer than gap_timeout (40). After every insert, every evicted seq must
    be at or below what bounds() reports as purged, and no seq still in flight is."""
    rng = random.Random(7)
    capacity, top, gap_timeout = 300, 5000, 40.0
    inserts = sorted((seq + rng.uniform(0, 30), seq) for seq in range(1, top + 1))
    collection: list[tuple[int, float]] = []  # (seq, at) in insertion order
    last_evicted = 0  # the highest evicted seq
    naive_misses = 0
    for now, seq in inserts:
        collection.append((seq, now))
        if len(collection) > capacity:
            last_evicted = max(last_evicted, collection.pop(0)[0])
        retained = sorted(collection)
        horizon = max(s for s, _ in collection[:follow.OLDEST_INSERTS])
        gone = schema.evicted_through(retained, horizon, now - gap_timeout)
        assert last_evicted <= gone
        assert gone <= max(last_evicted, retained[0][0] - 1)
        naive_misses += last_evicted > retained[0][0] - 1
    assert naive_misses > 0  # the oldest _id alone would have reported holes as retained


# -- the follower never dies -----------------------------------------------------------


async def test_an_undecodable_packet_is_skipped_and_the_rest_delivered() -> None:
    order = follow.Reassembler(cursor=0)
    bad = {**doc(2), "payload": b"junk"}
    for document in (doc(1), bad, doc(3), schema.tombstone_document(4, at=1.0), doc(5)):
        order.offer(document, now=0)
    got: list[int] = []

    async def listener(batch: Any) -> None:
        got.extend(p.seq for p in batch)

    await follow.PacketFollower._deliver(order, listener, DEFAULT_CODEC)
    assert got == [1, 3, 5] and order.cursor == 5


def test_a_document_that_is_not_a_packet_is_ignored() -> None:
    order = follow.Reassembler(cursor=0)
    order.offer({"_id": "not a seq"}, now=0)
    order.offer(doc(1), now=0)
    assert seqs(order.take(now=0)) == [1]


class FailingOnce(follow.PacketFollower):
    """The follower's loop around a stream that fails once with a non-driver error."""

    calls = 0

    async def _follow_stream(self, order: Any, listener: Any, token: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise ValueError("a bug, a bad document")
        self.stop()
        return token


async def test_the_packet_follower_survives_an_error_that_is_not_pymongo_s() -> None:
    follower = FailingOnce(packets=None, meta=None, following=asyncio.Event(),  # type: ignore[arg-type]
                           gap_timeout=1.0, poll_interval=1.0, codec=DEFAULT_CODEC)

    async def listener(batch: Any) -> None:
        pass

    await asyncio.wait_for(follower.run(listener, 0), 5)  # retried, did not raise
    assert follower.calls == 2


# -- the control stream is open before open() returns ----------------------------------


async def test_wait_ready_returns_once_the_stream_is_open() -> None:
    ready = asyncio.Event()

    async def run() -> None:
        await asyncio.sleep(0.01)
        ready.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(run())
    await asyncio.wait_for(follow.wait_ready(ready, task, within=5), 5)
    task.cancel()


async def test_wait_ready_fails_when_the_follower_ends_or_never_opens() -> None:
    async def broken() -> None:
        raise RuntimeError("cannot watch")

    task = asyncio.create_task(broken())
    with pytest.raises(StoreError, match="did not open") as error:
        await follow.wait_ready(asyncio.Event(), task, within=5)
    assert isinstance(error.value.__cause__, RuntimeError)
    stuck = asyncio.create_task(asyncio.sleep(10))
    with pytest.raises(StoreError, match="within 0 s"):
        await follow.wait_ready(asyncio.Event(), stuck, within=0.05)
    stuck.cancel()


# -- experimental ----------------------------------------------------------------------


async def test_open_warns_once_that_the_store_is_experimental() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(StoreError, match="cannot reach"):
            await asyncio.wait_for(MongoStore(UNREACHABLE).open(), 10)
    await settle_driver_sockets()
    experimental = [w for w in caught if issubclass(w.category, ExperimentalWarning)]
    assert len(experimental) == 1
    assert "experimental" in str(experimental[0].message)


# -- the target index ------------------------------------------------------------------


class _Packets:
    """A packets collection answering the target finds as a server would (a multikey
    match on ``k``, a range on ``_id``, no tombstones), recording each."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.documents = documents
        self.finds: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def find(self, query: dict[str, Any], **options: Any) -> _Found:
        self.finds.append((query, options))
        assert options["sort"] == [("_id", 1)]
        found = sorted((d for d in self.documents if query["k"] in d.get("k", ())
                        and query["_id"]["$gt"] < d["_id"] <= query["_id"]["$lte"]
                        and "tomb" not in d), key=lambda d: d["_id"])
        return _Found(found[:options["limit"]])


async def test_target_reads_find_each_range_through_the_target_index() -> None:
    from durable_adapter.stores.targets import NAMESPACE, TargetRange, room_target

    sent = [("/", ()), ("/", ("a",)), ("/chat", ("a",)), ("/", ("a", "b")), ("/", ("b",)),
            ("/", ()), ("/", ("a",))]
    documents = [roundtrip(schema.packet_document(seq, schema.packet_fields(NewPacket(
        namespace=ns, data=["e", seq], rooms=rooms)), at=1.0))
        for seq, (ns, rooms) in enumerate(sent, 1)]
    documents.append(schema.tombstone_document(8, 1.0))
    packets = _Packets(documents)
    store = MongoStore("mongodb://127.0.0.1:1/?replicaSet=rs0")
    store._collection = lambda name: packets  # type: ignore[assignment,method-assign,return-value]
    got = await store.read_targets([
        TargetRange("/", room_target("a"), 0, 8, 100),
        TargetRange("/", NAMESPACE, 0, 8, 100),
        TargetRange("/", room_target("b"), 3, 8, 1),
        TargetRange("/chat", room_target("a"), 0, 8, 100),
    ])
    assert [[p.seq for p in answer] for answer in got] == [[2, 4, 7], [1, 6], [4], [3]]
    assert len(packets.finds) == 4 and all(
        options["hint"] == "targets" for _, options in packets.finds)
    assert schema.TARGETS_INDEX == [("k", 1), ("_id", 1)]
