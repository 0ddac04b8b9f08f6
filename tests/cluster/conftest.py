"""The stores a cluster test runs on: a SQLite file, a fresh PostgreSQL schema, or a fresh
Redis key prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._mongo import new_url as mongo_url
from tests._postgres import POSTGRES_URL, postgres_schema
from tests._redis import redis_prefix, store_url


@dataclass(frozen=True)
class ClusterStore:
    """What every node of a cluster gets: the store URL and node_app arguments."""

    kind: str
    url: str
    args: tuple[str, ...] = ()


@asynccontextmanager
async def open_cluster_store(kind: str, tmp_path: Path) -> AsyncIterator[ClusterStore]:
    """A store of ``kind`` the test alone uses; "memory" serves one node only."""
    if kind == "memory":
        yield ClusterStore("memory", "memory://")
        return
    if kind == "mongo":  # a fresh database, dropped at exit
        yield ClusterStore("mongo", mongo_url())
        return
    if kind == "sqlite":
        yield ClusterStore("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'cluster.db'}")
        return
    if kind == "redis":  # a fresh key prefix, its keys deleted after
        with redis_prefix() as prefix:
            yield ClusterStore("redis", store_url(prefix))
        return
    # migrated before any node starts: PostgresStore never migrates by itself
    async with postgres_schema() as schema:
        yield ClusterStore("postgres", POSTGRES_URL, ("--schema", schema))


@pytest.fixture(params=["sqlite", "postgres", "redis", "mongo"])
async def cluster_store(request: pytest.FixtureRequest, tmp_path: Path
                        ) -> AsyncIterator[ClusterStore]:
    async with open_cluster_store(request.param, tmp_path) as store:
        yield store


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def fault_store(request: pytest.FixtureRequest, tmp_path: Path
                      ) -> AsyncIterator[ClusterStore]:
    """The multi-process stores of issue 11's fault tests (tests that want the memory
    store too parametrize this fixture indirectly)."""
    async with open_cluster_store(request.param, tmp_path) as store:
        yield store


@pytest.fixture
async def pg_cluster_store() -> AsyncIterator[ClusterStore]:
    async with postgres_schema() as schema:
        yield ClusterStore("postgres", POSTGRES_URL, ("--schema", schema))
