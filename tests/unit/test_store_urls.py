"""Store URLs in the forms users keep in ``DATABASE_URL`` reach the async drivers, through
one normaliser that the server, the emitters, the cleanup worker and the CLI share."""

from __future__ import annotations

from pathlib import Path

import pytest

import durable_adapter
from durable_adapter.cleanup import open_target
from durable_adapter.stores import normalize_store_url, store_from_url
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.postgres import PostgresStore


@pytest.mark.parametrize("given, expected", [
    pytest.param("postgres://app:pw@db:5432/app", "postgresql+asyncpg://app:pw@db:5432/app",
                 id="postgres"),
    pytest.param("postgres://app@db/app?application_name=x&sslmode=require",
                 "postgresql+asyncpg://app@db/app?application_name=x&ssl=require",
                 id="libpq sslmode as asyncpg ssl"),
    pytest.param("postgresql://app@db/app", "postgresql+asyncpg://app@db/app",
                 id="postgresql"),
    pytest.param("postgresql+psycopg2://app@db/app", "postgresql+asyncpg://app@db/app",
                 id="psycopg2"),
    pytest.param("postgresql+psycopg://app@db/app", "postgresql+asyncpg://app@db/app",
                 id="psycopg 3"),
    pytest.param("POSTGRES://app@db/app", "postgresql+asyncpg://app@db/app",
                 id="scheme case"),
    pytest.param("postgresql+asyncpg://app@db/app", "postgresql+asyncpg://app@db/app",
                 id="asyncpg kept"),
    pytest.param("sqlite:///app.db", "sqlite+aiosqlite:///app.db", id="sqlite relative"),
    pytest.param("sqlite:////var/app.db", "sqlite+aiosqlite:////var/app.db",
                 id="sqlite absolute"),
    pytest.param("sqlite+pysqlite:///app.db", "sqlite+aiosqlite:///app.db", id="pysqlite"),
    pytest.param("sqlite+aiosqlite:///app.db", "sqlite+aiosqlite:///app.db",
                 id="aiosqlite kept"),
    pytest.param("redis://cache:6379/0", "redis://cache:6379/0", id="redis kept"),
    pytest.param("mongodb+srv://c.example/app", "mongodb+srv://c.example/app",
                 id="mongodb+srv kept"),
    pytest.param("memory://", "memory://", id="memory kept"),
])
def test_url_forms_map_to_the_async_drivers(given: str, expected: str) -> None:
    assert normalize_store_url(given) == expected


@pytest.mark.parametrize("url", [
    pytest.param("mysql://app@db/app", id="unknown scheme"),
    pytest.param("postgresql+nodriver://app@db/app", id="unknown driver"),
    pytest.param("app.db", id="no scheme"),
])
def test_an_unusable_url_is_a_value_error_naming_the_accepted_forms(url: str) -> None:
    with pytest.raises(ValueError, match=r"accepted store URLs: memory://, sqlite:///path\.db"):
        normalize_store_url(url)
    with pytest.raises(durable_adapter.ConfigurationError):
        store_from_url(url)


def test_server_store_from_a_database_url_uses_asyncpg() -> None:
    sio = durable_adapter.AsyncServer(store="postgres://app@db/app")
    assert isinstance(sio.store, PostgresStore)
    assert sio.store.url.drivername == "postgresql+asyncpg"


def test_server_sqlstore_and_emitter_take_a_plain_sqlite_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    sio = durable_adapter.AsyncServer(store=url)
    assert isinstance(sio.store, SQLStore)
    assert sio.store.url.drivername == "sqlite+aiosqlite"
    assert SQLStore(url).url.drivername == "sqlite+aiosqlite"
    emitter_store = durable_adapter.AsyncEmitter(url).store
    assert isinstance(emitter_store, SQLStore)
    assert emitter_store.url.drivername == "sqlite+aiosqlite"


def test_cleanup_worker_takes_a_database_url() -> None:
    store, _lock = open_target("postgresql+psycopg2://app@db/app")
    assert isinstance(store, PostgresStore)
    assert store.url.drivername == "postgresql+asyncpg" and not store.auto_migrate


def test_emitter_refuses_memory_in_any_case() -> None:
    with pytest.raises(durable_adapter.ConfigurationError, match="history of one process"):
        durable_adapter.Emitter("MEMORY://")
