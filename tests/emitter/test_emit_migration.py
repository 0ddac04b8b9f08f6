"""Revision 0004: the SQL emit functions in a schema, or without one in the database's
default schema; they ring the store's NOTIFY channel at COMMIT; downgrade removes them."""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
from alembic import command
from sqlalchemy import Connection

from durable_adapter.migrate import migrate
from durable_adapter.stores.sql.dialect import create_engine, parse_url
from durable_adapter.stores.sql.migrate import alembic_config, locked_connection
from durable_adapter.stores.sql.postgres import PostgresStore, channel_name
from tests._postgres import POSTGRES_URL, WAIT, postgres_schema, require_server

FUNCTIONS = "SELECT count(*) FROM pg_proc WHERE proname LIKE 'durable_adapter_emit%' " \
            "AND pronamespace = $1::regnamespace"


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A database of its own: the store without a schema lives in its ``public``."""
    await require_server()
    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_without_a_schema_the_functions_work_from_any_search_path(database: str) -> None:
    url = f"postgresql+asyncpg:///{database}"
    await asyncio.wait_for(migrate(url), 60)
    async with PostgresStore(url) as store:  # creates the history
        conn = await asyncpg.connect(database=database)
        try:
            heard = asyncio.Queue[str]()
            await conn.add_listener(channel_name(None), lambda *args: heard.put_nowait(args[2]))
            emitter = await asyncpg.connect(database=database,
                                            server_settings={"search_path": "pg_catalog"})
            try:
                async with emitter.transaction():
                    seq = await emitter.fetchval(
                        "SELECT public.durable_adapter_emit('/', 'news', '[1]')")
                    await asyncio.sleep(0.1)
                    assert heard.empty()  # the bell rings at COMMIT, not before
            finally:
                await emitter.close()
            assert await asyncio.wait_for(heard.get(), WAIT) == channel_name(None)
        finally:
            await conn.close()
        [packet] = await store.read(after=seq - 1, limit=10)
        assert packet.data == ["news", 1] and packet.namespace == "/"


def _downgrade(connection: Connection, schema: str) -> None:
    config = alembic_config(schema=schema)
    config.attributes["connection"] = connection
    command.downgrade(config, "durable_adapter_0003")


async def test_downgrade_to_0003_removes_the_functions() -> None:
    async with postgres_schema() as schema:
        admin = await asyncpg.connect()
        try:
            assert await admin.fetchval(FUNCTIONS, schema) == 2
            engine = create_engine(parse_url(POSTGRES_URL), schema=schema)
            try:
                async with locked_connection(engine, schema) as connection:
                    await connection.run_sync(_downgrade, schema)
            finally:
                await engine.dispose()
            assert await admin.fetchval(FUNCTIONS, schema) == 0
            await asyncio.wait_for(migrate(POSTGRES_URL, schema=schema), 60)
            assert await admin.fetchval(FUNCTIONS, schema) == 2
        finally:
            await admin.close()


def test_the_migration_rings_the_channel_the_store_listens_on() -> None:
    # written out in the migration (a frozen snapshot): it must agree with the store's
    from durable_adapter.stores.sql.migrate import migrations_path

    path = migrations_path() / "versions" / "0004_emit_function.py"
    spec = importlib.util.spec_from_file_location("revision_0004", path)
    assert spec is not None and spec.loader is not None
    revision = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(revision)
    for schema in (None, "chat", "x" * 44, "y" * 63):
        assert revision._channel(schema) == channel_name(schema), schema
