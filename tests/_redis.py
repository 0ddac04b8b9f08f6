"""Redis for the tests: the server on 127.0.0.1:6379, a fresh key prefix per test, its keys
deleted after.

``DURABLE_ADAPTER_TEST_REDIS`` overrides the URL. Without it, when nothing answers there
and Docker is there (the docker extra), a Redis is started in Docker on that port for the
run. Otherwise the test skips, or under CI fails: CI must not pass by testing nothing.
"""

from __future__ import annotations

import atexit
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import NoReturn

import redis

from durable_adapter.stores.base import Store
from tests import _docker
from tests._env import server_missing

ENV = "DURABLE_ADAPTER_TEST_REDIS"
REDIS_URL = os.environ.get(ENV, "redis://127.0.0.1:6379/0")
WAIT = 10.0  # seconds for one administrative command
IMAGE = "redis:7-alpine"
_container_tried = False

_PENDING: set[str] = set()  # prefixes handed out by redis_url(), deleted at exit


def unavailable(reason: str) -> NoReturn:
    server_missing("Redis", f"none reachable at {REDIS_URL}: {reason}")


def _answers(host: str, port: int) -> bool:
    try:
        with redis.Redis(host=host, port=port, socket_timeout=2,
                         socket_connect_timeout=2) as probe:
            return bool(probe.ping())
    except redis.RedisError:
        return False


def start_container() -> bool:
    """Redis in Docker on port 6379, where the default REDIS_URL points, once; True if it
    started. Never when ``DURABLE_ADAPTER_TEST_REDIS`` names a server."""
    global _container_tried
    if _container_tried or os.environ.get(ENV):
        return False
    _container_tried = True
    return _docker.start(IMAGE, 6379, ready=_answers, configure=lambda container:
                         container.with_bind_ports(6379, 6379)) is not None


def client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, socket_timeout=WAIT, socket_connect_timeout=WAIT)


def delete_prefix(prefix: str) -> int:
    """Delete every key of the store with this prefix; returns how many."""
    with client() as admin:
        keys = list(admin.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        return int(admin.delete(*keys)) if keys else 0


def new_prefix() -> str:
    """A fresh prefix on a reachable Redis (or skip / fail)."""
    try:
        with client() as admin:
            admin.ping()
    except redis.RedisError as exc:
        if not start_container():
            unavailable(str(exc))
    return f"t_{secrets.token_hex(6)}"


@contextmanager
def redis_prefix() -> Iterator[str]:
    prefix = new_prefix()
    try:
        yield prefix
    finally:
        delete_prefix(prefix)


def store_url(prefix: str, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"prefix": prefix, **options}.items())
    return f"{REDIS_URL}?{query}"


def redis_url(_: Path | None = None) -> str:
    """A store URL with a fresh prefix, for factories that can only return a URL; the
    keys are deleted when the test process exits."""
    prefix = new_prefix()
    _PENDING.add(prefix)
    return store_url(prefix)


@atexit.register
def _delete_pending() -> None:
    for prefix in list(_PENDING):
        try:
            delete_prefix(prefix)
        except redis.RedisError:
            pass


@asynccontextmanager
async def redis_store(_: Path, **options: object) -> AsyncIterator[Store]:
    """An unopened store on a fresh prefix (a factory of ``tests/stores``)."""
    from durable_adapter.stores.redis import RedisStore

    with redis_prefix() as prefix:
        yield RedisStore(store_url(prefix, **options), block_ms=200)
