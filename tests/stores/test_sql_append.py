"""The SQL stores' append path (one round trip per batch, through the driver itself):
the tables of the configured schema, the SQLite write lock, a lost writer connection,
a row the database refuses failing only its own caller, payloads encoded as before."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from durable_adapter._codec import decode_value, encode_value
from durable_adapter.exceptions import ConfigurationError, StoreError
from durable_adapter.migrate import migrate
from durable_adapter.stores.base import ControlMessage
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.postgres import PostgresStore
from tests._harness import until
from tests._postgres import POSTGRES_URL, drop_schema, execute, require_server

from .conftest import sqlite_store
from .test_sql_control import Journal
from .test_sql_faults import store  # noqa: F401  (the fixture: SQLite and PostgreSQL)
from .test_store_contract import bounded, packet


@pytest.fixture
async def mixed_case_schema() -> AsyncIterator[str]:
    """A schema whose name must be quoted (upper case), beside the usual test schemas."""
    await require_server()
    schema = f"T_Mixed_{secrets.token_hex(4)}"
    await execute(f'CREATE SCHEMA "{schema}"')
    try:
        await asyncio.wait_for(migrate(POSTGRES_URL, schema=schema), 60)
        yield schema
    finally:
        await drop_schema(schema)


async def test_packets_and_control_rows_go_to_the_configured_schema(
        mixed_case_schema: str) -> None:
    writer = PostgresStore(POSTGRES_URL, schema=mixed_case_schema)
    reader = PostgresStore(POSTGRES_URL, schema=mixed_case_schema, poll_interval=60)
    await bounded(writer.open())
    await bounded(reader.open())
    try:
        journal = Journal()
        reader.on_control(journal.control)
        await bounded(reader.follow(journal.packets, after=0))
        await bounded(reader.listening.wait())  # woken by the statement's NOTIFY
        seqs = await bounded(asyncio.gather(
            writer.append(packet(1)),
            writer.publish_control(ControlMessage(method="join", origin="n1")),
            writer.append(packet(2, rooms=("r",)))))
        await journal.wait_for(3)
        assert journal.entries == [1, ("join", {}), 2]
        assert seqs[0] == 1 and seqs[2] == 2
        connection = await asyncpg.connect()
        try:
            rows = await connection.fetch(
                f'SELECT seq, rooms FROM "{mixed_case_schema}".durable_adapter_packets '
                "ORDER BY seq")
            after = await connection.fetchval(
                f'SELECT after_seq FROM "{mixed_case_schema}".durable_adapter_control')
        finally:
            await connection.close()
        assert [(r["seq"], r["rooms"]) for r in rows] == [(1, "[]"), (2, '["r"]')]
        assert after == 1
    finally:
        await bounded(reader.close())
        await bounded(writer.close())


async def test_an_append_waits_for_another_processes_write_lock(tmp_path: Path) -> None:
    async with sqlite_store(tmp_path) as instance:
        assert isinstance(instance, SQLStore)
        await bounded(instance.open())
        try:
            assert await bounded(instance.append(packet(1))) == 1
            path = str(tmp_path / "store.db")
            other = sqlite3.connect(path, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")  # as another process's writer would
                pending = asyncio.ensure_future(instance.append(packet(2)))
                with pytest.raises(TimeoutError):  # it cannot take a seq meanwhile
                    await asyncio.wait_for(asyncio.shield(pending), 0.3)
                other.execute(
                    "INSERT INTO durable_adapter_packets VALUES (2, '/', x'', '[]', '[]', ?)",
                    (time.time(),))
                other.execute("UPDATE durable_adapter_counter SET top = 2")
                other.execute("COMMIT")
            finally:
                other.close()
            assert await bounded(pending) == 3  # the top read under the lock
        finally:
            await bounded(instance.close())


async def test_a_row_the_database_refuses_fails_only_its_own_caller(
        store: SQLStore) -> None:  # noqa: F811
    # not valid UTF-8 text: refused when bound, inside the batch's write
    bad = ControlMessage(method="m", origin="n1", target="\ud800")
    results = await bounded(asyncio.gather(
        *(store.append(packet(i)) for i in range(5)), store.publish_control(bad),
        *(store.append(packet(i)) for i in range(5, 10)), return_exceptions=True))
    assert isinstance(results[5], StoreError)
    assert sorted(results[:5] + results[6:]) == list(range(1, 11))  # type: ignore[type-var]
    assert len(await bounded(store.read(after=0, limit=50))) == 10


async def test_a_lost_writer_connection_is_replaced(store: SQLStore) -> None:  # noqa: F811
    assert await bounded(store.append(packet(1))) == 1
    connection = store._writer_connection
    if isinstance(store, PostgresStore):
        # the server ends the writer's backend between two batches (a restart, an admin)
        pid = connection._driver.get_server_pid()
        await execute(f"SELECT pg_terminate_backend({pid})")
        await until(lambda: connection._driver is None or connection._driver.is_closed(),
                    "the client to see its connection closed", 10)
        assert await bounded(store.append(packet(2))) == 2  # on a fresh connection
        return
    await connection._driver.close()  # SQLite: closed under the writer
    with pytest.raises(StoreError):
        await bounded(store.append(packet(2)))
    assert await bounded(store.append(packet(3))) == 2  # the next batch reconnects


def _as_json_dumps_wrote_it(value: object) -> bytes:
    """The stored payload format as written before the encoder was reused (json.dumps)."""
    head = json.dumps(value, separators=(",", ":")).encode()
    return struct.pack(">II", 0, len(head)) + head


@pytest.mark.parametrize("value", [
    ["ev", {"i": 1, "pad": "x" * 10}], "s", 1.5, None, [1e300, -0.0, float("inf")],
    ["é\u2028\ud800", {"k": [[], {}]}], {"deep": [[[["x"]]]]},
])
def test_payloads_are_stored_exactly_as_before(value: object) -> None:
    # rows written by older nodes and by this one must read the same
    assert encode_value(value) == _as_json_dumps_wrote_it(value)


def test_a_payload_that_fails_to_encode_leaves_the_encoder_usable() -> None:
    circular: list[object] = []
    circular.append(circular)
    for _ in range(2):
        with pytest.raises(ValueError, match="Circular"):
            encode_value(circular)
    with pytest.raises(TypeError):
        encode_value([object()])
    shared = ["x"]
    assert decode_value(encode_value([shared, shared, b"\x00"])) == [["x"], ["x"], b"\x00"]


def test_sqlstore_refuses_a_postgresql_url_and_names_the_store_to_use() -> None:
    # its append path is SQLite's: on PostgreSQL it would fail at the first emit
    with pytest.raises(ConfigurationError, match="use PostgresStore"):
        SQLStore("postgresql+asyncpg://app@db/app")
