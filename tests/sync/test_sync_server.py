"""The sync server (``durable_adapter.Server``, and Flask-SocketIO on it) with the official
JavaScript client: nodes are real processes behind Werkzeug's threaded server.

An abrupt close is ``socket.io.engine.close()`` (no DISCONNECT); a client moves between
nodes through a proxy whose upstream the test switches.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests._proxy import Proxy
from tests.cluster.conftest import open_cluster_store
from tests.cluster.harness import released
from tests.cluster.node_app import HANDOVER_TIMEOUT_ENV, LEASE_EXPIRY_ENV
from tests.interop.jsclient import JsClient, js_client
from tests.sync._nodes import SyncNode, sync_nodes

ROOM = "lobby"  # node_app puts every fresh socket in it
MISSED = 200  # events emitted while the client is away
LEASE_EXPIRY = 2.0  # seconds: a killed node's sessions are taken over after it

needs_node = pytest.mark.usefixtures("js_client_installed")
APPS = [pytest.param(False, id="socketio"), pytest.param(True, id="flask")]


def ticks(js: JsClient) -> list[Any]:
    return [line["args"][0] for line in js.events("tick")]


def assert_offsets(js: JsClient) -> None:
    """Each stored event came with one opaque offset, never reused."""
    offsets = [line["args"][-1] for line in js.events("tick")]
    assert all(len(line["args"]) == 2 for line in js.events("tick"))
    assert all(isinstance(o, str) and o for o in offsets)
    assert len(set(offsets)) == len(offsets)


async def emit(node: SyncNode, start: int, stop: int, to: str | None = ROOM) -> None:
    await node.post("/emit", {"start": start, "stop": stop, "to": to})


async def drop(node: SyncNode, js: JsClient) -> str:
    """Abrupt close; returns the sid once ``node`` has stored its session."""
    sid: str = js.connects()[-1]["id"]
    start = js.mark()
    await js.close_engine()
    await js.wait_line("disconnect", start)
    await released(node.url, sid)
    return sid


async def assert_recovered(node: SyncNode, js: JsClient, sid: str, flask: bool) -> None:
    """Its second connect got its sid back, and the node its rooms and session."""
    again = await js.wait_connects(2)
    assert again["id"] == sid and again["recovered"] is True, js.describe()
    seen = await node.connect_of(sid)
    assert seen is not None and seen["recovered"] is True, seen
    assert ROOM in seen["rooms"] and sid in seen["rooms"], seen
    if flask:  # the Flask session, as Flask-SocketIO's handlers left it
        assert seen["flask_session"].get("user") == "ada", seen
    else:
        assert seen["session"] == {"user": "ada"}, seen


@asynccontextmanager
async def nodes(kind: str, tmp_path: Path, size: int, flask: bool,
                env: dict[str, str] | None = None) -> AsyncIterator[list[SyncNode]]:
    async with open_cluster_store(kind, tmp_path) as store, \
            sync_nodes(store.url, size, store.args, flask=flask, env=env) as started:
        yield started


@needs_node
@pytest.mark.parametrize("flask", APPS)
@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres", "redis"])
async def test_js_client_recovers_sid_rooms_session_and_missed_events_in_order(
        kind: str, flask: bool, tmp_path: Path, transport: str) -> None:
    async with nodes(kind, tmp_path, 1, flask) as (a,), js_client(
            a.url, transport=transport, auth={"user": "ada"}, reconnection=False) as js:
        first = await js.wait_connects(1)
        assert first["recovered"] is False
        await emit(a, 0, 2)
        await js.wait_events(2, "tick")

        sid = await drop(a, js)
        # missed: to its room, to its own sid, to everybody; and not for it
        await emit(a, 2, MISSED)
        await emit(a, MISSED, MISSED + 2, to=sid)
        await emit(a, MISSED + 2, MISSED + 4, to=None)
        await emit(a, -1, 0, to="elsewhere")

        await js.send("connect")
        await assert_recovered(a, js, sid, flask)
        await emit(a, MISSED + 4, MISSED + 6)
        await js.wait_events(MISSED + 6, "tick")
        assert ticks(js) == list(range(MISSED + 6))
        assert_offsets(js)
        if flask:  # Flask-SocketIO's emit in a handler of the recovered socket
            await js.send("emit", event="say", args=["hi"])
            said = (await js.wait_events(1, "said"))[0]
            assert said["args"][0] == {"text": "hi", "user": "ada"}
            assert len(said["args"]) == 2 and isinstance(said["args"][1], str)


@needs_node
@pytest.mark.parametrize("flask", APPS)
@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
async def test_js_client_recovers_on_another_process_sharing_the_store(
        kind: str, flask: bool, tmp_path: Path) -> None:
    async with nodes(kind, tmp_path, 2, flask) as (a, b), Proxy(a.port) as proxy, \
            js_client(proxy.url, auth={"user": "ada"}, reconnection=False) as js:
        await js.wait_connects(1)
        await emit(a, 0, 3)
        await js.wait_events(3, "tick")
        sid = await drop(a, js)
        await emit(b, 3, 20)  # missed, emitted by the other process
        await emit(a, 20, 25)  # and by this one

        proxy.upstream = b.port
        await js.send("connect")
        await assert_recovered(b, js, sid, flask)
        await emit(a, 25, 27)  # live, from the node it left
        await js.wait_events(27, "tick")
        assert ticks(js) == list(range(27))
        assert_offsets(js)


@needs_node
@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
async def test_sigterm_saves_and_the_client_recovers_on_another_process(
        kind: str, tmp_path: Path) -> None:
    async with nodes(kind, tmp_path, 2, False) as (a, b), Proxy(a.port) as proxy, \
            js_client(proxy.url, auth={"user": "ada"}, reconnection=False) as js:
        await js.wait_connects(1)
        await emit(a, 0, 3)
        await js.wait_events(3, "tick")
        sid = js.connects()[-1]["id"]
        start = js.mark()
        await a.stop()  # SIGTERM: saves the live session, closes the transport
        assert a.process is not None and a.process.returncode == 0
        await js.wait_line("disconnect", start)
        await emit(b, 3, 10)

        proxy.upstream = b.port
        await js.send("connect")
        await assert_recovered(b, js, sid, False)
        await js.wait_events(10, "tick")
        assert ticks(js) == list(range(10))


@needs_node
@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
async def test_sigkill_then_recovery_elsewhere_keeps_a_room_joined_just_before(
        kind: str, tmp_path: Path) -> None:
    """Nothing saves at a SIGKILL: the session as written through (the room's write
    committed before ``enter_room`` returned) is taken once the node's lease expired."""
    env = {LEASE_EXPIRY_ENV: str(LEASE_EXPIRY), HANDOVER_TIMEOUT_ENV: "1"}
    async with nodes(kind, tmp_path, 2, False, env) as (a, b), Proxy(a.port) as proxy, \
            js_client(proxy.url, auth={"user": "ada"}, reconnection=False) as js:
        await js.wait_connects(1)
        await js.send("emit_ack", event="join", args=["extra"], ref="j")
        assert (await js.wait_line("ack", ref="j"))["args"] == [True]
        await emit(a, 0, 3)
        await js.wait_events(3, "tick")
        sid = js.connects()[-1]["id"]
        start = js.mark()
        await a.stop(signal.SIGKILL)
        await js.wait_line("disconnect", start)
        await emit(b, 3, 8)
        await emit(b, 8, 10, to="extra")

        proxy.upstream = b.port
        await js.send("connect")
        await assert_recovered(b, js, sid, False)
        seen = await b.connect_of(sid)
        assert seen is not None and "extra" in seen["rooms"], seen
        await js.wait_events(10, "tick")
        assert ticks(js) == list(range(10))


@needs_node
async def test_a_handlers_emits_arrive_in_order_before_its_ack(tmp_path: Path) -> None:
    """The frames of a loop round are corked per socket: the ack, sent another way, still
    comes after every event the handler emitted, and the events in their order."""
    async with nodes("memory", tmp_path, 1, False) as (a,), js_client(
            a.url, auth={"user": "ada"}, reconnection=False) as js:
        await js.wait_connects(1)
        for ref in ("b1", "b2"):
            start = js.mark()
            await js.send("emit_ack", event="burst", args=[300], ref=ref)
            assert (await js.wait_line("ack", start, ref=ref))["args"] == ["done"]
            got = [line["args"][0] for line in js.lines[start:]
                   if line.get("ev") == "event" and line["name"] == "tick"]
            assert got == list(range(300)), js.describe()
