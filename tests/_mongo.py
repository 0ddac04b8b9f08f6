"""MongoDB for the tests: the replica set named by ``DURABLE_ADAPTER_MONGO_URL``, a fresh
database per test, dropped after.

Without the variable, and with a Docker engine and the docker extra (testcontainers),
a one-member replica set (``mongo:7``) is started in Docker for the whole run; otherwise
the MongoDB tests skip, in CI too (the run's summary counts them). No fake: a fake proves
nothing about change streams or capped collections.
"""

from __future__ import annotations

import atexit
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from durable_adapter.stores.base import Store
from durable_adapter.stores.mongo.schema import with_database
from tests import _docker
from tests._env import server_missing

ENV = "DURABLE_ADAPTER_MONGO_URL"
WAIT_MS = 10_000  # server selection timeout of the test's admin client
IMAGE = "mongo:7"

_container_url: str | None = None  # "" once starting one was tried and failed
_PENDING: set[tuple[str, str]] = set()  # (url, database) handed out by new_url(), dropped at exit


def _primary(host: str, port: int) -> bool:
    """The container's one-member replica set has a primary (initiated on first contact)."""
    import pymongo

    try:
        with pymongo.MongoClient(host, port, directConnection=True,
                                 serverSelectionTimeoutMS=2000) as client:
            try:
                client.admin.command("replSetInitiate", {
                    "_id": "rs0", "members": [{"_id": 0, "host": "localhost:27017"}]})
            except pymongo.errors.OperationFailure:  # initiated already
                pass
            return bool(client.admin.command("hello").get("isWritablePrimary"))
    except pymongo.errors.PyMongoError:
        return False


def _container() -> str:
    """The URL of a replica set started in Docker for the run, or "" without Docker."""
    global _container_url
    if _container_url is None:
        started = _docker.start(IMAGE, 27017, ready=_primary, configure=lambda container:
                                container.with_command("--replSet rs0 --bind_ip_all"))
        _container_url = "" if started is None else \
            f"mongodb://{started[0]}:{started[1]}/?directConnection=true"
    return _container_url


def base_url() -> str:
    """The replica set to test against, or skip the test (in CI too: no MongoDB there)."""
    url = os.environ.get(ENV) or _container()
    if not url:
        server_missing("MongoDB", f"{ENV} is not set and no Docker engine with the docker "
                       "extra was found", required_in_ci=False)
    return url


def drop_database(url: str, database: str) -> None:
    import pymongo

    with pymongo.MongoClient(url, serverSelectionTimeoutMS=WAIT_MS) as admin:
        admin.drop_database(database)


@contextmanager
def mongo_database() -> Iterator[tuple[str, str]]:
    """``(url, database)``: a fresh database name on the test replica set, dropped after."""
    url = base_url()
    database = f"da_test_{secrets.token_hex(6)}"
    try:
        yield url, database
    finally:
        drop_database(url, database)


def new_url(_: Path | None = None) -> str:
    """A store URL naming a fresh database, dropped at exit (a ``STORE_FACTORIES`` entry of
    the conformance suite, whose servers are built from URLs)."""
    url = base_url()
    database = f"da_test_{secrets.token_hex(6)}"
    _PENDING.add((url, database))
    return with_database(url, database)


@atexit.register
def _drop_pending() -> None:
    while _PENDING:
        url, database = _PENDING.pop()
        try:
            drop_database(url, database)
        except Exception:  # the server went away first: nothing left to clean
            pass


@asynccontextmanager
async def mongo_store(_: Path, **options: Any) -> AsyncIterator[Store]:
    """A factory for ``STORE_FACTORIES``: an unopened store on a fresh database."""
    from durable_adapter.stores.mongo import MongoStore

    with mongo_database() as (url, database):
        yield MongoStore(url, database=database, gap_timeout=2.0, poll_interval=0.2,
                         **options)
