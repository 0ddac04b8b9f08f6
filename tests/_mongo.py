"""MongoDB for the tests: the replica set named by ``DURABLE_ADAPTER_MONGO_URL``, a fresh
database per test, dropped after.

Without the variable, and with ``testcontainers`` installed and a Docker engine reachable,
one single-node replica set (``mongo:7``) is started for the whole run; otherwise the
MongoDB tests skip. No fake: a fake proves nothing about change streams or capped
collections.
"""

from __future__ import annotations

import atexit
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from durable_adapter.stores.base import Store
from durable_adapter.stores.mongo.schema import with_database

ENV = "DURABLE_ADAPTER_MONGO_URL"
SKIP_REASON = "DURABLE_ADAPTER_MONGO_URL is not set (needs a replica set)"
WAIT_MS = 10_000  # server selection timeout of the test's admin client
IMAGE = "mongo:7"

_container_url: str | None = None
_PENDING: set[tuple[str, str]] = set()  # (url, database) handed out by new_url(), dropped at exit


def _start_container() -> str | None:
    """A one-node replica set in Docker, or None when there is no engine."""
    global _container_url
    if _container_url is not None:
        return _container_url
    try:
        from testcontainers.core.container import DockerContainer  # type: ignore[import-not-found]
        from testcontainers.core.waiting_utils import wait_for_logs  # type: ignore[import-not-found]

        container = DockerContainer(IMAGE).with_command("--replSet rs0 --bind_ip_all")
        container.with_exposed_ports(27017)
        container.start()
    except Exception:  # testcontainers missing or no Docker engine
        return None
    atexit.register(container.stop)
    wait_for_logs(container, "Waiting for connections", timeout=60)
    initiate = ("try { rs.status() } catch (e) { rs.initiate({_id: 'rs0', members: "
                "[{_id: 0, host: 'localhost:27017'}]}) }")
    container.exec(["mongosh", "--quiet", "--eval", initiate])
    host, port = container.get_container_host_ip(), container.get_exposed_port(27017)
    _container_url = f"mongodb://{host}:{port}/?directConnection=true"
    return _container_url


def base_url() -> str:
    """The replica set to test against, or skip the test."""
    url = os.environ.get(ENV) or _start_container()
    if not url:
        pytest.skip(SKIP_REASON)
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
