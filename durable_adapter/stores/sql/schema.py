"""The SQL tables, shared by :mod:`durable_adapter.stores.sql` and the Alembic migrations.

Tables carry no schema: a PostgreSQL schema is applied at run time through
``schema_translate_map``, so one definition serves every deployment and every test schema.
A change here needs a new file in ``migrations/versions``; the migration tests compare
the two.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    Text,
)

from ..._codec import DEFAULT_CODEC, Codec
from ..base import NewPacket, Session, StoredPacket
from ..membership import MembershipLog

PREFIX = "durable_adapter_"

#: Alembic's version table for our history, apart from the host application's.
VERSION_TABLE = f"{PREFIX}alembic_version"

#: The one row of ``counter`` (and of ``meta``) has this id.
SINGLETON_ID = 1

# On SQLite an INTEGER PRIMARY KEY is the rowid: packets are stored in seq order, no
# second index. PostgreSQL gets a BIGINT.
SeqType = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

meta = Table(
    f"{PREFIX}meta",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    # random hex naming this history; replaced whenever the counter is recreated
    Column("epoch", String(32), nullable=False),
)

counter = Table(
    f"{PREFIX}counter",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("top", BigInteger, nullable=False),
    Column("purged_through", BigInteger, nullable=False),
)

packets = Table(
    f"{PREFIX}packets",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=False),
    Column("namespace", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("rooms", Text, nullable=False),  # JSON list of room names
    Column("except_rooms", Text, nullable=False),  # JSON list of room names
    Column("created_at", Double, nullable=False),  # unix seconds
)

# The target index (stores/targets.py): one row per (namespace, target) a packet was sent
# to, written in the packet's transaction and purged with it (hence the seq index). A
# restore reads its targets' rows in seq order; the key is what a split of the history
# by target would partition on. SQLite: the key is the table (no rowid).
packet_targets = Table(
    f"{PREFIX}packet_targets",
    metadata,
    Column("namespace", Text, primary_key=True),
    Column("target", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Index(f"ix_{PREFIX}packet_targets_seq", "seq"),
    sqlite_with_rowid=False,
)

sessions = Table(
    f"{PREFIX}sessions",
    metadata,
    Column("namespace", Text, primary_key=True),
    Column("pid_hash", String(64), primary_key=True),
    Column("sid", Text, nullable=False),
    Column("rooms", Text, nullable=False),  # JSON list of room names
    Column("data", LargeBinary, nullable=False),
    Column("epoch", String(32), nullable=False),
    Column("start_seq", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("last_sent_seq", BigInteger, nullable=True),
    Column("disconnected_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    # JSON room stays (MembershipLog); NULL in rows written before revision 0003
    Column("membership", Text, nullable=True),
    # where a recovery without an offset starts; NULL in rows written before 0003
    Column("resume_seq", BigInteger, nullable=True),
    # the node whose socket is live with it (expires_at is then LIVE_EXPIRY); NULL once
    # disconnected, and in rows written before revision 0005
    Column("owner", Text, nullable=True),
    Index(f"ix_{PREFIX}sessions_expires_at", "expires_at"),
    Index(f"ix_{PREFIX}sessions_namespace_sid", "namespace", "sid"),
    Index(f"ix_{PREFIX}sessions_owner", "owner"),
)

# One lease per node: alive until expires_at (unix seconds), renewed every few seconds.
# A session owned by a node whose lease expired can be taken over by another node.
nodes = Table(
    f"{PREFIX}nodes",
    metadata,
    Column("id", Text, primary_key=True),
    Column("expires_at", Double, nullable=False),
    # the recovery window (seconds) the node serves, for the cleanup's retention; NULL
    # for nodes of releases before revision durable_adapter_0006
    Column("max_disconnection_duration", Double, nullable=True),
)

# Cross-node instructions (ControlMessage), live only: each node reads ``id > cursor``
# from where it started following, and rows older than a minute are pruned. Rows are
# written under the counter row lock, so ids are in commit order, and ``after_seq`` (the
# top at that moment) places each message between two packets of the history.
control = Table(
    f"{PREFIX}control",
    metadata,
    Column("id", SeqType, primary_key=True, autoincrement=True),
    Column("after_seq", BigInteger, nullable=False),
    Column("origin", Text, nullable=False),
    Column("target", Text, nullable=True),
    Column("method", Text, nullable=False),
    Column("body", Text, nullable=False),  # JSON object
    Column("created_at", Double, nullable=False),  # unix seconds
    # SQLite: never reuse the id of a pruned row, a cursor would skip its successor
    sqlite_autoincrement=True,
)


# -- rows <-> records: rooms as JSON text, payloads and session data via _codec ---------


def packet_values(packet: NewPacket, codec: Codec = DEFAULT_CODEC) -> dict[str, Any]:
    """The columns of ``packet`` but ``seq`` and ``created_at`` (set when written)."""
    return {
        "namespace": packet.namespace,
        "payload": codec.encode(list(packet.data)),
        "rooms": _json_rooms(packet.rooms),
        "except_rooms": _json_rooms(packet.except_rooms),
    }


def _json_rooms(rooms: tuple[str, ...]) -> str:
    # most packets go to the whole namespace or skip nobody: no encoder call then
    if not rooms:
        return "[]"
    try:  # json.dumps' own text for a list of str, without its per-call set-up
        return "[" + ", ".join(map(encode_basestring_ascii, rooms)) + "]"
    except TypeError:  # a room that is not a str
        return json.dumps(list(rooms))


def session_values(session: Session, codec: Codec = DEFAULT_CODEC) -> dict[str, Any]:
    return {
        "namespace": session.namespace,
        "pid_hash": session.pid_hash,
        "sid": session.sid,
        "rooms": json.dumps(list(session.rooms)),
        "data": codec.encode(session.data),
        "epoch": session.epoch,
        "start_seq": session.start_seq,
        "position": session.position,
        "last_sent_seq": session.last_sent_seq,
        "disconnected_at": session.disconnected_at,
        "expires_at": session.expires_at,
        "membership": None if session.membership is None
        else json.dumps(session.membership.to_value()),
        "resume_seq": session.resume_seq,
        "owner": session.owner,
    }


def packet_from_row(row: Row[Any], codec: Codec = DEFAULT_CODEC) -> StoredPacket:
    return StoredPacket(
        namespace=row.namespace,
        data=codec.decode(row.payload),
        rooms=tuple(json.loads(row.rooms)),
        except_rooms=tuple(json.loads(row.except_rooms)),
        seq=row.seq,
        created_at=row.created_at,
    )


def session_from_row(row: Row[Any], codec: Codec = DEFAULT_CODEC) -> Session:
    return Session(
        pid_hash=row.pid_hash,
        namespace=row.namespace,
        sid=row.sid,
        rooms=tuple(json.loads(row.rooms)),
        data=codec.decode(row.data),
        epoch=row.epoch,
        start_seq=row.start_seq,
        position=row.position,
        last_sent_seq=row.last_sent_seq,
        disconnected_at=row.disconnected_at,
        expires_at=row.expires_at,
        membership=None if row.membership is None
        else MembershipLog.from_value(json.loads(row.membership)),
        resume_seq=row.resume_seq,
        owner=row.owner,
    )
