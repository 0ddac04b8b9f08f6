"""The standalone emitters (AsyncEmitter, and Emitter for sync code) against a real
server on SQLite, PostgreSQL and Redis: stored emits with offsets in order among the
server's own, recovered by a client that was away; volatile emits live only; remote
disconnect and rooms; another process; a thread pool."""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

import durable_adapter
from durable_adapter.exceptions import ConfigurationError
from durable_adapter.stores.sql.postgres import PostgresStore
from tests._harness import drop_transport, serving, settle_handlers, until
from tests.emitter.conftest import Backend, Recorder, make_backend

Server = tuple[durable_adapter.AsyncServer, str]


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The emitters work on every shared store (MongoDB: no server here)."""
    async with make_backend(request.param, tmp_path) as backend:
        yield backend


async def test_emits_reach_the_server_s_clients_in_offset_order(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    sio, _ = server
    async with durable_adapter.AsyncEmitter(backend.store()) as emitter:
        seqs = []
        for i in range(3):
            seqs.append(await emitter.emit("news", {"from": "emitter", "i": i}))
            await sio.emit("news", {"from": "server", "i": i})
    await recorder.inbox.wait_for(6)
    assert [p["from"] for p in recorder.payloads] == ["emitter", "server"] * 3
    assert recorder.seqs == sorted(recorder.seqs) and len(set(recorder.seqs)) == 6
    assert [seq for seq, p in zip(recorder.seqs, recorder.payloads, strict=True)
            if p["from"] == "emitter"] == seqs


async def test_every_node_delivers_the_same_packets_in_the_same_order(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    second = durable_adapter.AsyncServer(
        store=backend.store(), async_mode="aiohttp",
        connection_state_recovery={"max_disconnection_duration": 60})
    async with serving(second) as url:
        other = Recorder()
        await other.connect(url)
        try:
            async def from_emitter() -> None:
                async with durable_adapter.AsyncEmitter(backend.store()) as emitter:
                    for i in range(10):
                        await emitter.emit("news", f"emitter {i}")

            async def from_node(sio: durable_adapter.AsyncServer, name: str) -> None:
                for i in range(10):
                    await sio.emit("news", f"{name} {i}")

            await asyncio.gather(from_emitter(), from_node(server[0], "first"),
                                 from_node(second, "second"))
            await recorder.inbox.wait_for(30)
            await other.inbox.wait_for(30)
            assert recorder.inbox.items == other.inbox.items
            assert recorder.seqs == sorted(recorder.seqs)
        finally:
            await other.client.disconnect()


async def test_rooms_tuples_skip_sid_and_binary_as_sio_emit(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    other = Recorder()
    await other.connect(server[1])
    try:
        async with durable_adapter.AsyncEmitter(backend.store()) as emitter:
            await emitter.emit("news", (1, b"\x00\xff"), to=recorder.client.get_sid())
            await emitter.emit("news", "all-but-one", skip_sid=recorder.client.get_sid())
            await emitter.emit("news", "everyone")
        await recorder.inbox.wait_for(2)
        await other.inbox.wait_for(2)
        assert recorder.payloads == [[1, b"\x00\xff"], "everyone"]
        assert other.payloads == ["all-but-one", "everyone"]
    finally:
        await other.client.disconnect()


async def test_a_client_that_was_away_recovers_the_emitter_s_packets(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    sio, url = server
    await drop_transport(recorder.client)
    await settle_handlers(recorder.client)
    sid = recorder.client.get_sid()
    await until(lambda: not sio.manager.is_connected(sid, "/"), "the server saw the drop")
    state = recorder.client.recovery_state()
    async with durable_adapter.AsyncEmitter(backend.store()) as emitter:
        await emitter.emit("news", "while away 1")
        await emitter.emit("news", "while away 2", to=sid)
    back = Recorder()
    await back.connect(url, state)
    try:
        assert back.client.is_recovered()
        await back.inbox.wait_for(2)
        assert back.payloads == ["while away 1", "while away 2"]
    finally:
        await back.client.disconnect()


async def test_volatile_emits_go_live_without_an_offset(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    live: list[object] = []
    recorder.client.on("flash", lambda *args: live.append(args))
    async with durable_adapter.AsyncEmitter(backend.store()) as emitter:
        before = (await emitter.store.bounds()).top
        # not a string last: the client would take a trailing string for an offset
        assert await emitter.emit("flash", {"now": 1}, volatile=True) is None
        await until(lambda: live == [({"now": 1},)], lambda: f"flash received: {live}")
        assert (await emitter.store.bounds()).top == before  # nothing stored


async def test_remote_rooms_and_disconnect(backend: Backend, server: Server,
                                           recorder: Recorder) -> None:
    sio, _ = server
    sid = recorder.client.get_sid()
    async with durable_adapter.AsyncEmitter(backend.store()) as emitter:
        await emitter.enter_room(sid, "vip")
        await until(lambda: "vip" in sio.rooms(sid), "the socket entered vip")
        await emitter.emit("news", "to vip", room="vip")
        await recorder.inbox.wait_for(1)
        await emitter.leave_room(sid, "vip")
        await until(lambda: "vip" not in sio.rooms(sid), "the socket left vip")
        await emitter.enter_room(sid, "gold")
        await until(lambda: "gold" in sio.rooms(sid), "the socket entered gold")
        await emitter.close_room("gold")
        await until(lambda: "gold" not in sio.rooms(sid), "gold was closed")
        await emitter.disconnect(sid)
        await until(lambda: not sio.manager.is_connected(sid, "/"), "the socket was dropped")
    assert recorder.payloads == ["to vip"]


def _script(backend: Backend, body: str) -> str:
    store = (f"PostgresStore({backend.url!r}, schema={backend.schema!r})" if backend.schema
             else repr(backend.url))
    return textwrap.dedent(f"""
        import durable_adapter
        from durable_adapter.stores.sql.postgres import PostgresStore
        emitter = durable_adapter.Emitter({store})
        """) + textwrap.dedent(body) + "\nemitter.close()\n"


async def test_a_sync_emitter_in_another_process(backend: Backend, server: Server,
                                                 recorder: Recorder) -> None:
    script = _script(backend, """
        for i in range(3):
            emitter.emit("news", {"process": i})
        """)
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", script],
                                     capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    await recorder.inbox.wait_for(3)
    assert recorder.payloads == [{"process": i} for i in range(3)]


async def test_a_sync_emitter_used_before_a_fork_works_in_the_child(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    """A Celery prefork worker: the module made the emitter, the parent used it, then
    forked; the child's emits must arrive (its parent's thread did not come along)."""
    store = repr(backend.url) if backend.schema is None else \
        f"lambda: PostgresStore({backend.url!r}, schema={backend.schema!r})"
    script = f"""
import os
import durable_adapter
from durable_adapter.stores.sql.postgres import PostgresStore
emitter = durable_adapter.Emitter({store})
emitter.emit("news", "parent before")
pid = os.fork()
if pid == 0:
    emitter.emit("news", "child")
    emitter.close()
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert status == 0, status
emitter.emit("news", "parent after")
emitter.close()
"""
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", script],
                                     capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    await recorder.inbox.wait_for(3)
    assert recorder.payloads == ["parent before", "child", "parent after"]


async def test_one_sync_emitter_shared_by_a_thread_pool(backend: Backend, server: Server,
                                                        recorder: Recorder) -> None:
    def run() -> list[int | None]:
        with durable_adapter.Emitter(backend.store()) as emitter, \
                concurrent.futures.ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda i: emitter.emit("news", i), range(40)))

    seqs = await asyncio.to_thread(run)
    assert len(set(seqs)) == 40
    await recorder.inbox.wait_for(40)
    assert sorted(recorder.payloads) == list(range(40))  # each once
    assert recorder.seqs == sorted(recorder.seqs)
    # each thread's emit got the seq its packet was delivered with
    assert dict(zip(recorder.payloads, recorder.seqs, strict=True)) == \
        dict(zip(range(40), seqs, strict=True))


def test_a_closed_sync_emitter_refuses_calls(backend: Backend) -> None:
    emitter = durable_adapter.Emitter(backend.store())
    emitter.close()
    emitter.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        emitter.emit("news", 1)


def nested(depth: int) -> list[object]:
    value: list[object] = ["deep"]
    for _ in range(depth):
        value = [value]
    return value


def test_memory_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="memory"):
        durable_adapter.AsyncEmitter("memory://")


async def test_data_that_cannot_be_stored_fails_its_emit_only(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    async with durable_adapter.AsyncEmitter(backend.store()) as emitter:
        with pytest.raises(TypeError):
            await emitter.emit("news", {"x": object()})
        with pytest.raises(RecursionError):  # stored fine, but python-socketio cannot send it
            await emitter.emit("news", nested(500))
        await emitter.emit("news", "fine")
    await recorder.inbox.wait_for(1)
    assert recorder.payloads == ["fine"]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_an_emitter_holds_no_listen_connection(backend: Backend, server: Server,
                                                     recorder: Recorder) -> None:
    store = backend.store()
    assert isinstance(store, PostgresStore)
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
    conn = await asyncpg.connect()
    try:
        async with durable_adapter.AsyncEmitter(store) as emitter:
            await emitter.emit("news", "hello")
            await recorder.inbox.wait_for(1)
            # the server's follower listens; the emitter, which only writes, does not
            assert await conn.fetchval(query, store.listen_application_name) == 1
    finally:
        await conn.close()


async def test_the_sync_emitter_warns_when_built_inside_an_event_loop(
        backend: Backend) -> None:
    """``Emitter`` was the async class before: code that still awaits it in a coroutine
    would block the loop on every call, so building it there warns."""
    with pytest.warns(RuntimeWarning, match="use AsyncEmitter in async code"):
        durable_adapter.Emitter(backend.url).close()
    with pytest.warns(RuntimeWarning), pytest.raises(TypeError, match="AsyncEmitter"):
        async with durable_adapter.Emitter(backend.url):
            pass


def test_sync_emitter_is_a_deprecated_name_of_emitter(backend: Backend) -> None:
    with pytest.warns(DeprecationWarning, match="now called Emitter"):
        emitter = durable_adapter.SyncEmitter(backend.url)
    assert isinstance(emitter, durable_adapter.Emitter)
    emitter.close()


async def test_sync_emitter_room_wide_join_leave_and_disconnect(
        backend: Backend, server: Server, recorder: Recorder) -> None:
    sio, _ = server
    sid = recorder.client.get_sid()
    emitter = await asyncio.to_thread(durable_adapter.Emitter, backend.store())
    try:
        await asyncio.to_thread(emitter.sockets_join, "vip")
        await until(lambda: "vip" in sio.rooms(sid), "the socket joined vip")
        await asyncio.to_thread(emitter.sockets_leave, "vip", room=sid)
        await until(lambda: "vip" not in sio.rooms(sid), "the socket left vip")
        await asyncio.to_thread(emitter.disconnect_sockets)
        await until(lambda: not sio.manager.is_connected(sid, "/"), "the socket was dropped")
    finally:
        await asyncio.to_thread(emitter.close)
