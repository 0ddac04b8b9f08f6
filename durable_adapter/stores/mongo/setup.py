"""Creating the MongoDB store's collections, indexes and history document, idempotently.

Run by :meth:`MongoStore.open` (unless ``auto_migrate=False``) and by
``durable-adapter migrate --store mongodb://...``. Every step tolerates a concurrent run.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid, DuplicateKeyError, OperationFailure

from ...exceptions import ConfigurationError
from . import schema
from .schema import HISTORY_ID

NAMESPACE_EXISTS = 48  # server error code of a create that lost a race


async def create_schema(
    db: AsyncDatabase[Any],
    packets: AsyncCollection[Any],
    control: AsyncCollection[Any],
    sessions: AsyncCollection[Any],
    meta: AsyncCollection[Any],
    *,
    packets_size: int,
    control_size: int,
) -> None:
    """Capped ``packets`` and ``control`` (their _id index comes with them), the
    packets' target index, and the sessions' indexes: TTL on ``expires_at`` (a date),
    ``(ns, sid)``, and ``owner``."""
    await create_capped(db, packets, packets_size)
    await create_capped(db, control, control_size)
    await index_targets(packets, meta)
    await sessions.create_index(
        [("expires_at", ASCENDING)], expireAfterSeconds=0, name="expires_at_ttl"
    )
    await sessions.create_index([("ns", ASCENDING), ("sid", ASCENDING)], name="ns_sid")
    await sessions.create_index([("owner", ASCENDING)], name="owner")


async def index_targets(packets: AsyncCollection[Any], meta: AsyncCollection[Any]) -> None:
    """The packets' target index. Packets stored before it existed have no target keys,
    so a restore could not find them: they count as purged (the history's watermark is
    raised to the newest of them), and a client owed one is refused, never sent a replay
    with a hole."""
    existed = "targets" in await packets.index_information()
    await packets.create_index(schema.TARGETS_INDEX, name="targets")
    if existed:
        return
    newest = await packets.find_one(
        {}, projection={"_id": True}, sort=[("_id", -1)], hint=[("_id", ASCENDING)]
    )
    if newest is not None:  # no history document yet: init_history starts above them
        await meta.update_one({"_id": HISTORY_ID},
                              {"$max": {"purged_through": int(newest["_id"])}})


async def create_capped(db: AsyncDatabase[Any], collection: AsyncCollection[Any], size: int
                        ) -> None:
    """Create ``collection`` capped at ``size`` bytes; an existing one keeps its size."""
    try:
        await db.create_collection(collection.name, capped=True, size=size)
    except CollectionInvalid:
        pass  # it exists: checked below
    except OperationFailure as exc:
        if exc.code != NAMESPACE_EXISTS:
            raise
    options = await collection.options()
    if not options.get("capped"):
        raise ConfigurationError(
            f"collection {collection.name} exists but is not capped; drop or rename it"
        )


async def missing_collections(
    db: AsyncDatabase[Any], collections: Sequence[AsyncCollection[Any]]
) -> list[str]:
    names = set(await db.list_collection_names())
    return sorted(c.name for c in collections if c.name not in names)


async def init_history(meta: AsyncCollection[Any], packets: AsyncCollection[Any]) -> str | None:
    """Create the history document (epoch, counter, watermark) once; return the epoch.

    A new database gets a new random epoch. If packets exist without the document
    (deleted by hand), the new history starts above them, so no seq is handed out twice.
    """
    newest = await packets.find_one(
        {}, projection={"_id": True}, sort=[("_id", -1)], hint=[("_id", ASCENDING)]
    )
    start = int(newest["_id"]) if newest is not None else 0
    with contextlib.suppress(DuplicateKeyError):  # a concurrent open created it
        await meta.update_one(
            {"_id": HISTORY_ID},
            {"$setOnInsert": {"epoch": secrets.token_hex(8), "top": start,
                              "purged_through": start}},
            upsert=True,
        )
    document = await meta.find_one({"_id": HISTORY_ID}, projection={"epoch": True})
    return None if document is None else str(document["epoch"])
