"""The MongoDB store's collections, documents and checks: pure functions, no I/O.

Collections (``<prefix>_<name>`` in one database):

``meta``
    One document ``{_id: "history", epoch, top, purged_through}``: the epoch of this
    history, the seq counter and the purge watermark.
``packets``
    Capped. ``{_id: seq, ns, payload, rooms, except, at}``, or a tombstone
    ``{_id: seq, tomb: true, at}`` for a seq whose writer never inserted it.
``sessions``
    ``{_id: "<pid_hash>:<namespace>", ns, sid, ..., expires_ts, expires_at}``; TTL index
    on the date ``expires_at``, index on ``(ns, sid)``.
    A live session has ``owner`` (its node) and no ``expires_at`` date: it goes with its
    owner's lease, not by time. Index on ``owner``.
``nodes``
    ``{_id: node, expires_ts}``: each node's lease.
``control``
    Capped, small. ``{origin, target, method, body, at}``: cross-node operations.
"""

from __future__ import annotations

import datetime
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bson.binary import Binary

from ..._codec import DEFAULT_CODEC, Codec, decode_value, encode_value
from ...exceptions import ConfigurationError
from ..base import ControlMessage, NewPacket, Session, StoredPacket
from ..membership import MembershipLog
from ..targets import TargetRange, target_key, targets_of

HISTORY_ID = "history"
DUPLICATE_KEY = 11000  # server error code
SCHEMES = ("mongodb", "mongodb+srv")
DEFAULT_DATABASE = "durable_adapter"
MIN_CAPPED_SIZE = 4096  # bytes; the server rounds smaller sizes up anyway

_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_DATABASE = re.compile(r'^[^/\\. "$*<>:|?\x00]{1,63}$')
_CREDENTIALS = re.compile(r"^(?P<scheme>[^:/]+://)(?P<user>[^:@/]*)(?::[^@/]*)?@")

STANDALONE_HELP = (
    "the MongoDB store needs a replica set (change streams do not exist on a standalone "
    "server): start mongod with --replSet rs0, run rs.initiate() once in mongosh, and add "
    "?replicaSet=rs0 to the store URL (a one-node replica set is enough for development)"
)


# -- configuration -------------------------------------------------------------------


def check_url(url: str) -> None:
    if not isinstance(url, str) or url.split("://", 1)[0].lower() not in SCHEMES:
        raise ConfigurationError(
            f"the MongoDB store takes a mongodb:// or mongodb+srv:// URL, got {redact(url)!r}"
        )


def check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ConfigurationError(
            f"prefix must be a plain identifier of at most 64 characters, got {prefix!r}"
        )


def check_database(name: str) -> None:
    if not isinstance(name, str) or not _DATABASE.match(name):
        raise ConfigurationError(f"not a valid MongoDB database name: {name!r}")


def check_size(option: str, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_CAPPED_SIZE:
        raise ConfigurationError(f"{option} must be an int >= {MIN_CAPPED_SIZE}, got {size!r}")


def check_positive(option: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{option} must be a number > 0, got {value!r}")


def redact(url: object) -> str:
    """``url`` with its password replaced by ``***`` (safe for logs and errors)."""
    text = str(url)
    match = _CREDENTIALS.match(text)
    if match is None or ":" not in text[len(match["scheme"]) : match.end()]:
        return text
    return f"{match['scheme']}{match['user']}:***@{text[match.end():]}"


def with_database(url: str, database: str) -> str:
    """``url`` with its path (the default database) set to ``database``."""
    check_url(url)
    check_database(database)
    scheme, rest = url.split("://", 1)
    hosts, _, tail = rest.partition("/")
    query = tail.partition("?")[2] if "?" in tail else ""
    if "?" in hosts:  # mongodb://host?opts, no slash
        hosts, _, query = hosts.partition("?")
    return f"{scheme}://{hosts}/{database}" + (f"?{query}" if query else "")


def check_replica_set(hello: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigurationError` unless ``hello`` comes from a replica set or mongos.

    A replica set member answers with ``setName``; a mongos (sharded cluster, which also
    has change streams) with ``msg: "isdbgrid"``; a standalone mongod with neither.
    """
    if hello.get("setName") or hello.get("msg") == "isdbgrid":
        return
    raise ConfigurationError(STANDALONE_HELP)


# -- packets ---------------------------------------------------------------------------


def packet_fields(packet: NewPacket, codec: Codec = DEFAULT_CODEC) -> dict[str, Any]:
    """The stored fields of ``packet`` without ``_id`` and ``at`` (encoding may raise)."""
    return {
        "ns": packet.namespace,
        "payload": Binary(codec.encode(list(packet.data))),
        "rooms": list(packet.rooms),
        "except": list(packet.except_rooms),
        # its target index keys (TARGETS_INDEX); packets stored before it have none
        "k": [target_key(packet.namespace, target) for target in targets_of(packet.rooms)],
    }


#: the target index of the packets collection: each packet under each of its keys
TARGETS_INDEX = [("k", 1), ("_id", 1)]


def target_filter(wanted: TargetRange) -> dict[str, Any]:
    """The filter of one target range (the index :data:`TARGETS_INDEX`)."""
    return {"k": target_key(wanted.namespace, wanted.target),
            "_id": {"$gt": wanted.after, "$lte": wanted.until}, "tomb": {"$exists": False}}


def packet_document(seq: int, fields: Mapping[str, Any], at: float) -> dict[str, Any]:
    return {"_id": seq, **fields, "at": at}


def tombstone_document(seq: int, at: float) -> dict[str, Any]:
    """Fills ``seq`` for good: its writer is gone, followers skip it, a late insert fails."""
    return {"_id": seq, "tomb": True, "at": at}


def is_tombstone(document: Mapping[str, Any]) -> bool:
    return document.get("tomb") is True


def packet_from_document(document: Mapping[str, Any], codec: Codec = DEFAULT_CODEC) -> StoredPacket:
    return StoredPacket(
        namespace=document["ns"],
        data=codec.decode(bytes(document["payload"])),
        rooms=tuple(document["rooms"]),
        except_rooms=tuple(document["except"]),
        seq=int(document["_id"]),
        created_at=float(document["at"]),
    )


def evicted_through(head: Sequence[tuple[int, float]], horizon: int,
                    settled_before: float) -> int:
    """The highest seq at the head of the history that may be gone for good (-1: none).

    A capped collection evicts in *insertion* order, and inserts land out of seq order,
    so the oldest retained seq is not enough: a seq above it may have been evicted while
    the one below it stayed. Such holes lie among the seqs of the oldest insertions, so
    a hole counts as gone when it is below ``horizon`` (the highest seq of the oldest
    insertions still retained, ``$natural`` order) and the retained seq above it was
    written before ``settled_before`` (now - gap_timeout): a writer still inserting it
    would hold its seq longer than the followers let it (they fence it with a tombstone).
    A writer that died looks the same until it is tombstoned: reporting it gone meanwhile
    only refuses recoveries from before it, never misses a packet.

    :param head: ``(seq, at)`` of the retained documents from the lowest seq on, in seq
                 order (tombstones included).
    """
    if not head:
        return -1
    gone = head[0][0] - 1  # everything below the oldest retained seq
    for (before, _), (after, at) in itertools.pairwise(head):
        if after > before + 1 and after <= horizon and at <= settled_before:
            gone = after - 1
    return gone


def read_filter(after: int, until: int | None, namespace: str | None) -> dict[str, Any]:
    """The filter of a replay page: a range on ``_id`` (the index), tombstones left out."""
    seq_range: dict[str, int] = {"$gt": after}
    if until is not None:
        seq_range["$lte"] = until
    query: dict[str, Any] = {"_id": seq_range, "tomb": {"$exists": False}}
    if namespace is not None:
        query["ns"] = namespace
    return query


# -- sessions --------------------------------------------------------------------------


def session_key(namespace: str, pid_hash: str) -> str:
    # pid_hash is fixed-length hex: the key splits one way only
    return f"{pid_hash}:{namespace}"


def as_date(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


def ttl_date(session: Session) -> datetime.datetime | None:
    """The date the TTL index deletes ``session`` at: None (never) while a node owns it,
    or when its expiry is beyond what a date holds (:data:`~..base.LIVE_EXPIRY`)."""
    if session.owner is not None:
        return None
    try:
        return as_date(session.expires_at)
    except (OverflowError, ValueError, OSError):
        return None


def session_document(session: Session, codec: Codec = DEFAULT_CODEC) -> dict[str, Any]:
    document = {
        "_id": session_key(session.namespace, session.pid_hash),
        "pid_hash": session.pid_hash,
        "ns": session.namespace,
        "sid": session.sid,
        "rooms": list(session.rooms),
        "data": Binary(codec.encode(session.data)),
        "epoch": session.epoch,
        "start_seq": session.start_seq,
        "position": session.position,
        "last_sent_seq": session.last_sent_seq,
        "disconnected_at": session.disconnected_at,
        "expires_ts": session.expires_at,  # exact: every take compares against it
        "membership": None if session.membership is None else session.membership.to_value(),
        "resume_seq": session.resume_seq,
        "owner": session.owner,
    }
    date = ttl_date(session)
    if date is not None:  # a BSON date, for the TTL index; absent: never deleted by time
        document["expires_at"] = date
    return document


def session_from_document(document: Mapping[str, Any], codec: Codec = DEFAULT_CODEC) -> Session:
    last_sent = document["last_sent_seq"]
    membership = document.get("membership")
    return Session(
        pid_hash=document["pid_hash"],
        namespace=document["ns"],
        sid=document["sid"],
        rooms=tuple(document["rooms"]),
        data=codec.decode(bytes(document["data"])),
        epoch=document["epoch"],
        start_seq=int(document["start_seq"]),
        position=int(document["position"]),
        last_sent_seq=None if last_sent is None else int(last_sent),
        disconnected_at=float(document["disconnected_at"]),
        expires_at=float(document["expires_ts"]),
        # absent in documents saved by an older version
        membership=None if membership is None else MembershipLog.from_value(membership),
        resume_seq=None if document.get("resume_seq") is None else int(document["resume_seq"]),
        owner=document.get("owner"),
    )


def save_filter(key: str, node: str | None) -> dict[str, Any]:
    """Which stored document a (conditional) save replaces: with ``node``, only one owned
    by ``node``. A document owned by another node or by nobody (released) matches
    nothing, and the upsert's insert then fails on the duplicate ``_id``:
    :func:`only_taken_over`."""
    if node is None:
        return {"_id": key}
    return {"_id": key, "owner": node}


def only_taken_over(details: Mapping[str, Any]) -> bool:
    """True when every error of a save's bulk write (``BulkWriteError.details``) is the
    duplicate ``_id`` of a session another node owns (skipped, as asked)."""
    errors = details.get("writeErrors") or []
    return not details.get("writeConcernErrors") and all(
        error.get("code") == DUPLICATE_KEY for error in errors)


def take_filter(key: str, owner: str | None, now: float) -> dict[str, Any]:
    """The compare-and-set of a take: the document still has the owner the decision was
    made on (and, disconnected, is still unexpired). Of concurrent takes one matches."""
    if owner is None:
        return {"_id": key, "owner": None, "expires_ts": {"$gt": now}}
    return {"_id": key, "owner": owner}


def take_update(node: str) -> dict[str, Any]:
    """Make ``node`` the owner; the TTL date goes: an owned session goes with its lease."""
    return {"$set": {"owner": node}, "$unset": {"expires_at": ""}}


#: the fields :meth:`~.store.MongoStore.owners` reads of a session document
OWNER_FIELDS = {"_id": False, "ns": True, "pid_hash": True, "owner": True}


def owners_filter(keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The session documents of ``(namespace, pid_hash)`` keys: one ``$in`` on ``_id``."""
    return {"_id": {"$in": [session_key(namespace, pid_hash) for namespace, pid_hash in keys]}}


def owners_from_documents(documents: Iterable[Mapping[str, Any]]
                          ) -> dict[tuple[str, str], str | None]:
    """Each found document's key and owner (None: disconnected, or saved before owners
    were stored)."""
    return {(document["ns"], document["pid_hash"]): document.get("owner")
            for document in documents}


def dead_owners(owners: Sequence[str], leases: Mapping[str, float], cutoff: float
                ) -> list[str]:
    """The owners whose lease expired at or before ``cutoff`` (no lease: expired at 0)."""
    return [owner for owner in owners if leases.get(owner, 0.0) <= cutoff]


# -- control messages ------------------------------------------------------------------


def control_document(message: ControlMessage, at: float) -> dict[str, Any]:
    return {
        "origin": message.origin,
        "target": message.target,
        "method": message.method,
        "body": Binary(encode_value(message.body)),
        "at": at,
    }


def control_from_document(document: Mapping[str, Any]) -> ControlMessage:
    return ControlMessage(
        method=document["method"],
        origin=document["origin"],
        target=document.get("target"),
        body=decode_value(bytes(document["body"])),
    )
