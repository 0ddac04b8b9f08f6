"""emit_in and the durable_adapter_emit SQL function against a real server on SQLite and
PostgreSQL: a rollback delivers nothing, a commit delivers once and in offset order among
every other emit, a client that was away recovers them, a trigger emits, bad input is a
clear SQL error that stores nothing."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import durable_adapter
from durable_adapter.exceptions import ConfigurationError, StoreError
from tests._harness import drop_transport, settle_handlers, until
from tests.emitter.conftest import Backend, Recorder
from tests.emitter.test_emitter import nested

Server = tuple[durable_adapter.AsyncServer, str]
postgres_only = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


@asynccontextmanager
async def app_connection(backend: Backend) -> AsyncIterator[AsyncConnection]:
    """The application's own connection to the store's database (not the store's)."""
    engine = create_async_engine(backend.url)
    try:
        async with engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()


async def top(backend: Backend) -> int:
    store = backend.store()
    async with store:
        return (await store.bounds()).top


async def test_rollback_delivers_nothing_commit_delivers_once(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    async with app_connection(backend) as conn:
        async with conn.begin() as transaction:
            await durable_adapter.emit_in(conn, "news", "rolled back", schema=backend.schema)
            await transaction.rollback()
        async with conn.begin():
            seq = await durable_adapter.emit_in(conn, "news", "committed",
                                                schema=backend.schema)
    async with durable_adapter.AsyncEmitter(backend.store()) as emitter:
        marker = await emitter.emit("news", "after")
    await recorder.inbox.wait_for(2)
    assert recorder.payloads == ["committed", "after"]
    assert recorder.seqs == [seq, marker]
    assert marker == seq + 1  # the rolled back emit left no hole


async def test_an_async_session_binary_and_a_large_payload(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    big = "x" * 2_000_000
    engine = create_async_engine(backend.url)
    try:
        async with AsyncSession(engine) as session, session.begin():
            await durable_adapter.emit_in(session, "news", (b"\x00\xff", {"big": big}),
                                          to=recorder.client.get_sid(), schema=backend.schema)
    finally:
        await engine.dispose()
    await recorder.inbox.wait_for(1)
    assert recorder.payloads == [[b"\x00\xff", {"big": big}]]


async def test_sync_connection_and_session(backend: Backend, server: Server,
                                           recorder: Recorder) -> None:
    """The synchronous API on the real driver: run_sync hands over a sync Connection and
    a sync Session (what Flask or Django code holds)."""
    def on_connection(connection: Connection) -> int:
        seq: int = durable_adapter.emit_in(connection, "news", "connection",
                                           schema=backend.schema)
        return seq

    def on_session(session: Session) -> int:
        seq: int = durable_adapter.emit_in(session, "news", "session", schema=backend.schema)
        return seq

    engine = create_async_engine(backend.url)
    try:
        async with engine.begin() as conn:
            first = await conn.run_sync(on_connection)
        async with AsyncSession(engine) as session, session.begin():
            second = await session.run_sync(on_session)
    finally:
        await engine.dispose()
    await recorder.inbox.wait_for(2)
    assert recorder.payloads == ["connection", "session"]
    assert recorder.seqs == [first, second]


async def test_a_client_that_was_away_recovers_transactional_emits(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    sio, url = server
    sid = recorder.client.get_sid()
    await drop_transport(recorder.client)
    await settle_handlers(recorder.client)
    await until(lambda: not sio.manager.is_connected(sid, "/"), "the server saw the drop")
    async with app_connection(backend) as conn, conn.begin():
        await durable_adapter.emit_in(conn, "news", "away 1", schema=backend.schema)
        await durable_adapter.emit_in(conn, "news", "away 2", to=sid, schema=backend.schema)
    back = Recorder()
    await back.connect(url, recorder.client.recovery_state())
    try:
        assert back.client.is_recovered()
        await back.inbox.wait_for(2)
        assert back.payloads == ["away 1", "away 2"]
    finally:
        await back.client.disconnect()


async def test_concurrent_emits_from_servers_emitters_and_transactions_in_order(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    sio, _ = server
    count = 15

    async def from_server() -> None:
        for i in range(count):
            await sio.emit("news", f"server {i}")

    async def from_emitter() -> None:
        async with durable_adapter.AsyncEmitter(backend.store()) as emitter:
            for i in range(count):
                await emitter.emit("news", f"emitter {i}")

    async def from_transactions(worker: str) -> None:
        async with app_connection(backend) as conn:
            for i in range(count):
                async with conn.begin() as transaction:
                    await durable_adapter.emit_in(conn, "news", f"{worker} {i}",
                                                  schema=backend.schema)
                    if i % 3 == 0:  # and every third one rolled back
                        await durable_adapter.emit_in(conn, "news", f"rolled back {i}",
                                                      schema=backend.schema)
                        await transaction.rollback()

    workers = ("sql-a", "sql-b", "sql-c")  # transactions on connections of their own
    await asyncio.gather(from_server(), from_emitter(),
                         *(from_transactions(worker) for worker in workers))
    expected = count * 2 + (count - len(range(0, count, 3))) * len(workers)
    await recorder.inbox.wait_for(expected)
    async with durable_adapter.AsyncEmitter(backend.store()) as emitter:
        await emitter.emit("news", "end")
    await recorder.inbox.wait_for(expected + 1)
    payloads = recorder.payloads
    assert payloads[-1] == "end" and len(payloads) == len(set(payloads)) == expected + 1
    assert not [p for p in payloads if p.startswith("rolled back")]
    assert not [p for p in payloads if p.startswith("sql") and int(p.split()[1]) % 3 == 0]
    # dense and in order: a rolled back emit leaves no hole, none is seen out of order
    first = recorder.seqs[0]
    assert recorder.seqs == list(range(first, first + expected + 1))
    for source in ("server", "emitter", *workers):  # each source's own order kept
        mine = [int(p.split()[1]) for p in payloads if p.startswith(source + " ")]
        assert mine == sorted(mine), source


def test_emit_in_refuses_redis_and_mongodb_saying_why() -> None:
    import redis.asyncio

    with pytest.raises(ConfigurationError, match="Redis has no rollback"):
        durable_adapter.emit_in(redis.asyncio.Redis(), "news", 1)
    pymongo = pytest.importorskip("pymongo")
    client: Any = pymongo.AsyncMongoClient("mongodb://127.0.0.1:1", connect=False)
    with pytest.raises(ConfigurationError, match="capped collection"):
        durable_adapter.emit_in(client, "news", 1)


async def test_emit_in_refuses_a_namespace_without_a_slash(backend: Backend) -> None:
    async with app_connection(backend) as conn, conn.begin():
        with pytest.raises(StoreError, match="must start with '/'"):
            await durable_adapter.emit_in(conn, "news", 1, namespace="chat",
                                          schema=backend.schema)


async def test_emit_in_refuses_what_python_socketio_cannot_send(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    async with app_connection(backend) as conn:
        async with conn.begin():
            with pytest.raises(RecursionError):
                await durable_adapter.emit_in(conn, "news", nested(500), schema=backend.schema)
            await durable_adapter.emit_in(conn, "news", "fine", schema=backend.schema)
    await recorder.inbox.wait_for(1)
    assert recorder.payloads == ["fine"]


def test_emit_in_refuses_what_is_not_a_connection() -> None:
    with pytest.raises(TypeError, match="emit_in takes"):
        durable_adapter.emit_in(object(), "news", 1)


# -- SQLite only ----------------------------------------------------------------------

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@sqlite_only
async def test_sqlite_sync_session_in_another_thread(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    def in_a_worker() -> int:
        engine = create_engine(backend.url.replace("+aiosqlite", ""))
        try:
            with Session(engine) as session:
                durable_adapter.emit_in(session, "news", "rolled back")
                session.rollback()
                seq: int = durable_adapter.emit_in(session, "news", "committed")
                session.commit()
                return seq
        finally:
            engine.dispose()

    seq = await asyncio.to_thread(in_a_worker)
    async with durable_adapter.AsyncEmitter(backend.store()) as emitter:
        marker = await emitter.emit("news", "after")
    await recorder.inbox.wait_for(2)
    assert recorder.payloads == ["committed", "after"] and recorder.seqs == [seq, marker]


@sqlite_only
async def test_sqlite_refuses_a_schema_and_a_store_never_opened(backend: Backend,
                                                                 tmp_path: Any) -> None:
    async with app_connection(backend) as conn:
        with pytest.raises(ConfigurationError, match="schema"):
            await durable_adapter.emit_in(conn, "news", 1, schema="tenant")
    async with durable_adapter.AsyncEmitter(backend.url):  # opening creates the tables
        pass
    engine = create_async_engine(backend.url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM durable_adapter_counter"))
        async with engine.begin() as conn:
            with pytest.raises(StoreError, match="no history yet"):
                await durable_adapter.emit_in(conn, "news", 1)
    finally:
        await engine.dispose()


# -- PostgreSQL only ------------------------------------------------------------------


def psql(backend: Backend, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"],
        input=f'SET search_path TO "{backend.schema}";\n{script}',
        capture_output=True, text=True, timeout=30, check=False)


@postgres_only
async def test_psql_begin_emit_rollback_then_commit_to_a_room(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    sio, _ = server
    other = Recorder()
    await other.connect(server[1])
    try:
        await recorder.client.emit("join", "r1")
        await until(lambda: "r1" in sio.rooms(recorder.client.get_sid()), "joined r1")
        rolled_back = await asyncio.to_thread(psql, backend, """
            BEGIN;
            SELECT durable_adapter_emit('/', 'news', '["rolled back"]', ARRAY['r1']);
            ROLLBACK;
            """)
        assert rolled_back.returncode == 0, rolled_back.stderr
        committed = await asyncio.to_thread(psql, backend, """
            BEGIN;
            SELECT durable_adapter_emit('/', 'news', '[{"order": 7}, "paid"]', ARRAY['r1']);
            COMMIT;
            """)
        assert committed.returncode == 0, committed.stderr
        await recorder.inbox.wait_for(1)
        assert recorder.payloads == [[{"order": 7}, "paid"]]
        async with durable_adapter.AsyncEmitter(backend.store()) as emitter:
            await emitter.emit("news", "everyone")
        await other.inbox.wait_for(1)
        assert other.payloads == ["everyone"]  # the room packet skipped it
        await recorder.inbox.wait_for(2)
        assert recorder.payloads[1] == "everyone"
    finally:
        await other.client.disconnect()


@postgres_only
async def test_a_trigger_emits_on_insert_only_when_it_commits(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    setup = await asyncio.to_thread(psql, backend, """
        CREATE TABLE orders (id int PRIMARY KEY, total numeric NOT NULL);
        CREATE FUNCTION order_placed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM durable_adapter_emit('/', 'news', jsonb_build_array(to_jsonb(NEW)));
            RETURN NEW;
        END $$;
        CREATE TRIGGER order_placed AFTER INSERT ON orders
            FOR EACH ROW EXECUTE FUNCTION order_placed();
        """)
    assert setup.returncode == 0, setup.stderr
    async with app_connection(backend) as conn:
        await conn.execute(text(f'SET search_path TO "{backend.schema}"'))
        await conn.commit()
        async with conn.begin() as transaction:
            await conn.execute(text("INSERT INTO orders VALUES (1, 10)"))
            await transaction.rollback()
        async with conn.begin():
            await conn.execute(text("INSERT INTO orders VALUES (2, 20.5)"))
            await conn.execute(text("INSERT INTO orders VALUES (3, 30)"))
    await recorder.inbox.wait_for(2)
    assert recorder.payloads == [{"id": 2, "total": 20.5}, {"id": 3, "total": 30}]


@postgres_only
async def test_a_raw_asyncpg_connection(backend: Backend, server: Server,
                                        recorder: Recorder) -> None:
    conn = await asyncpg.connect()
    try:
        with pytest.raises(StoreError, match="transaction"):
            await durable_adapter.emit_in(conn, "news", 1, schema=backend.schema)
        transaction = conn.transaction()
        await transaction.start()
        await durable_adapter.emit_in(conn, "news", "rolled back", schema=backend.schema)
        await transaction.rollback()
        async with conn.transaction():
            seq = await durable_adapter.emit_in(conn, "news", ("asyncpg", b"\x01"),
                                                schema=backend.schema)
    finally:
        await conn.close()
    await recorder.inbox.wait_for(1)
    assert recorder.payloads == [["asyncpg", b"\x01"]] and recorder.seqs == [seq]


@postgres_only
@pytest.mark.parametrize(("call", "message"), [
    ("durable_adapter_emit('/', 'news', '{\"a\": 1}')", "args must be a JSON array"),
    ("durable_adapter_emit('/', 'news', '\"text\"')", "args must be a JSON array"),
    ("durable_adapter_emit('chat', 'news', '[]')", "namespace must start with"),
    ("durable_adapter_emit(NULL, 'news', '[]')", "namespace must start with"),
    ("durable_adapter_emit('/', NULL, '[]')", "event is NULL"),
    ("durable_adapter_emit('/', 'news', '[]', ARRAY[NULL]::text[])", "non-NULL room"),
    ("durable_adapter_emit('/', 'news', '[]', '{}', ARRAY[['a'],['b']])", "flat arrays"),
    ("durable_adapter_emit('/', 'news', '[]', ARRAY[1, 2])", "does not exist"),
    ("durable_adapter_emit(E'/\\x00', 'news', '[]')", "0x00"),
])
async def test_bad_input_is_a_clear_error_that_stores_nothing(
        backend: Backend, call: str, message: str | None) -> None:
    before = await top(backend)
    conn = await asyncpg.connect(server_settings={"search_path": backend.schema or ""})
    try:
        await conn.execute("CREATE TABLE work (id int)")
        async with conn.transaction():
            await conn.execute("INSERT INTO work VALUES (1)")
            with pytest.raises(asyncpg.PostgresError) as raised:
                async with conn.transaction():  # a savepoint: the rest of the work stays
                    await conn.fetchval(f"SELECT {call}")
        if message is not None:
            assert message in str(raised.value)
        assert await conn.fetchval("SELECT count(*) FROM work") == 1
    finally:
        await conn.close()
    assert await top(backend) == before


@postgres_only
async def test_emit_in_refuses_a_nul_namespace_before_any_sql(backend: Backend) -> None:
    async with app_connection(backend) as conn, conn.begin():
        with pytest.raises(StoreError, match="NUL"):
            await durable_adapter.emit_in(conn, "news", 1, namespace="/a\x00",
                                          schema=backend.schema)


@postgres_only
async def test_repeatable_read_gets_a_serialization_failure_to_retry(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    """The counter row changes with every emit: a snapshot transaction that emits after
    another emit committed since its snapshot fails as such transactions do, and a
    retry delivers it (docs/emitting.md)."""
    conn = await asyncpg.connect(server_settings={"search_path": backend.schema or ""})
    failures = 0
    try:
        for attempt in range(2):
            try:
                async with conn.transaction(isolation="repeatable_read"):
                    await conn.fetchval("SELECT count(*) FROM durable_adapter_packets")
                    if attempt == 0:  # another emit commits after the snapshot was taken
                        async with durable_adapter.AsyncEmitter(backend.store()) as emitter:
                            await emitter.emit("news", "meanwhile")
                    await conn.fetchval(
                        """SELECT durable_adapter_emit('/', 'news', '["rr"]')""")
                break
            except asyncpg.SerializationError:
                failures += 1
    finally:
        await conn.close()
    assert failures == 1
    await recorder.inbox.wait_for(2)
    assert recorder.payloads == ["meanwhile", "rr"]


async def test_transactional_emits_are_found_by_their_targets(
        backend: Backend, server: Server) -> None:
    """A restore finds packets through the target index: emit_in (SQLite rows,
    PostgreSQL's emit function) writes its rows in the caller's transaction."""
    from durable_adapter.stores.targets import NAMESPACE, TargetRange, room_target

    before = await top(backend)
    async with app_connection(backend) as conn, conn.begin():
        await durable_adapter.emit_in(conn, "news", "all", schema=backend.schema)
        await durable_adapter.emit_in(conn, "news", "r1", to="r1", schema=backend.schema)
        await durable_adapter.emit_in(conn, "news", "both", to=["r1", "r2", "r1"],
                                      schema=backend.schema)
    store = backend.store()
    async with store:
        after = (await store.bounds()).top
        got = await store.read_targets([
            TargetRange("/", target, before, after, 10)
            for target in (NAMESPACE, room_target("r1"), room_target("r2"))])
    assert [[p.data[1] for p in answer] for answer in got] == [
        ["all"], ["r1", "both"], ["both"]]
