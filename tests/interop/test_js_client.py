"""Our server with the official JavaScript client (socket.io-client 4.8), and with ours.

Every case runs over websocket and over long-polling, on every store that is built.
The JS client is a node process (js/client.mjs) that prints what happens to it; an
abrupt close is ``socket.io.engine.close()``: the transport goes, no DISCONNECT packet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import durable_adapter
from durable_adapter import RecoveryFailure
from tests._harness import WAIT, Inbox, drop_transport, serving
from tests.interop.jsclient import JsClient, Line, js_client

ROOM = "lobby"  # every socket joins it on a fresh (not recovered) connect


class Server:
    """A durable_adapter server whose handlers record what they saw."""

    def __init__(self, store: str) -> None:
        # python-engineio keeps a long-poll GET open for ping_interval + ping_timeout
        # after its client sent CLOSE (it does not end it), and the test server's
        # shutdown waits for it: short ping settings keep each polling test short.
        self.sio = durable_adapter.AsyncServer(
            store=store, async_mode="aiohttp", namespaces="*", ping_interval=1,
            ping_timeout=2, connection_state_recovery={"max_disconnection_duration": 60})
        self.url = ""
        self.connects: list[dict[str, Any]] = []
        self.disconnects: list[dict[str, Any]] = []
        self.received: list[tuple[str, str, tuple[Any, ...]]] = []
        sio = self.sio

        @sio.on("connect", namespace="*")
        async def connect(namespace: str, sid: str, environ: Any, auth: Any) -> None:
            recovered = sio.is_recovered(sid, namespace)
            self.connects.append({
                "sid": sid, "namespace": namespace, "auth": auth, "recovered": recovered,
                "failure": sio.recovery_failure(sid, namespace),
                "rooms": set(sio.rooms(sid, namespace)),
                "session": dict(await sio.get_session(sid, namespace)),
            })
            if not recovered:
                await sio.enter_room(sid, ROOM, namespace=namespace)
                user = auth.get("user") if isinstance(auth, dict) else None
                await sio.save_session(sid, {"user": user, "namespace": namespace},
                                       namespace=namespace)

        @sio.on("disconnect", namespace="*")
        async def disconnect(namespace: str, sid: str, reason: Any) -> None:
            self.disconnects.append({"sid": sid, "namespace": namespace, "reason": reason})

        @sio.on("*", namespace="*")
        async def any_event(event: str, namespace: str, sid: str, *args: Any) -> Any:
            self.received.append((namespace, event, args))
            return ("echo", *args)

    def last_connect(self, sid: str, namespace: str = "/") -> dict[str, Any]:
        return [c for c in self.connects if c["sid"] == sid and c["namespace"] == namespace][-1]

    async def until(self, condition: Any, what: str) -> None:
        """Poll a server-side condition for up to WAIT s: the server has no event for it."""
        deadline = time.monotonic() + WAIT
        while not condition():
            assert time.monotonic() < deadline, f"timed out after {WAIT}s: {what}"
            await asyncio.sleep(0.01)

    async def wait_gone(self, sid: str, namespace: str = "/") -> None:
        """Until the server processed the drop of ``sid`` (its session is saved then)."""
        await self.until(lambda: not self.sio.manager.is_connected(sid, namespace),
                         f"the server to notice that {sid} [{namespace}] left")

    async def emit_many(self, start: int, stop: int, to: str = ROOM,
                        namespace: str = "/", event: str = "tick") -> list[int]:
        for i in range(start, stop):
            await self.sio.emit(event, i, to=to, namespace=namespace)
        return list(range(start, stop))


@asynccontextmanager
async def running(store: str) -> AsyncIterator[Server]:
    server = Server(store)
    async with serving(server.sio) as url:
        server.url = url
        yield server


def payloads(events: list[Line]) -> list[Any]:
    return [event["args"][0] for event in events]


def assert_stored(events: list[Line]) -> None:
    """Each carries exactly one payload plus its offset: an opaque string, never reused."""
    for event in events:
        assert len(event["args"]) == 2, event
        assert isinstance(event["args"][-1], str) and event["args"][-1], event
    offsets = [event["args"][-1] for event in events]
    assert len(set(offsets)) == len(offsets), f"an offset was used twice: {offsets}"


async def end_marker(server: Server, js: JsClient, namespace: str = "/") -> None:
    """Emit a last event and wait for it: whatever came before has arrived by then.

    No socket was refused on the way: a CONNECT_ERROR (a duplicate CONNECT, say)
    destroys the JS Socket, and its later events would silently never come.
    """
    count = len(js.events("end", namespace))
    await server.sio.emit("end", count, to=ROOM, namespace=namespace)
    await js.wait_events(count + 1, "end", namespace)
    assert not js.find("connect_error"), js.describe()


async def drop_js(server: Server, js: JsClient, namespaces: tuple[str, ...] = ("/",)
                  ) -> dict[str, str]:
    """Abrupt close; returns each namespace's sid, once the server has seen them go."""
    sids = {ns: js.connects(ns)[-1]["id"] for ns in namespaces}
    start = js.mark()
    await js.close_engine()
    for ns, sid in sids.items():
        await js.wait_line("disconnect", start, ns=ns)
        await server.wait_gone(sid, ns)
    return sids


needs_node = pytest.mark.usefixtures("js_client_installed")


# -- the official JS client ------------------------------------------------------


@needs_node
async def test_abrupt_close_recovers_id_rooms_session_and_missed_events(
        store_url: str, transport: str) -> None:
    async with running(store_url) as server, js_client(
            server.url, transport=transport, auth={"user": "ada"}, reconnection=False) as js:
        first = await js.wait_connects(1)
        assert first["recovered"] is False
        sid = first["id"]
        await server.emit_many(0, 2)
        await js.wait_events(2, "tick")

        await drop_js(server, js)
        # missed: to a room it is in, to its own id, to everybody
        await server.sio.emit("tick", 2, to=ROOM)
        await server.sio.emit("tick", 3, to=sid)
        await server.sio.emit("tick", 4)
        await server.emit_many(5, 8)
        # not for it: a room it is not in, a room it is in but with it excluded
        await server.sio.emit("tick", -1, to="elsewhere")
        await server.sio.emit("tick", -2, to=ROOM, skip_sid=sid)

        await js.send("connect")
        again = await js.wait_connects(2)
        assert again["id"] == sid
        assert again["recovered"] is True
        await server.emit_many(8, 10)
        await end_marker(server, js)

        ticks = js.events("tick")
        assert payloads(ticks) == list(range(10))
        assert_stored(ticks)
        seen = server.last_connect(sid)
        assert seen["recovered"] is True
        assert {ROOM, sid} <= seen["rooms"]
        assert seen["session"] == {"user": "ada", "namespace": "/"}
        assert seen["auth"] == {"user": "ada"}  # pid and offset are not the application's


@needs_node
async def test_three_recoveries_in_a_row_while_the_server_keeps_emitting(
        store_url: str, transport: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="durable_adapter")
    async with running(store_url) as server, js_client(server.url, transport=transport) as js:
        sid = (await js.wait_connects(1))["id"]
        await server.until(lambda: server.connects, "the server's connect handler")
        emitted = 0
        stop = asyncio.Event()

        async def stream() -> None:
            nonlocal emitted
            while not stop.is_set():
                await server.sio.emit("tick", emitted, to=ROOM)
                emitted += 1
                await asyncio.sleep(0.005)

        streamer = asyncio.create_task(stream())
        try:
            for round_ in range(1, 4):
                await js.wait_events(emitted, "tick")
                start = js.mark()
                await js.close_engine()  # it reconnects by itself after 100 ms
                await js.wait_line("disconnect", start)
                back = await js.wait_connects(round_ + 1)
                assert back["id"] == sid, f"recovery #{round_}"
                assert back["recovered"] is True, f"recovery #{round_}"
        finally:
            stop.set()
            await asyncio.wait_for(streamer, WAIT)
        await end_marker(server, js)

        ticks = js.events("tick")
        assert payloads(ticks) == list(range(emitted)), "a gap or a duplicate"
        assert_stored(ticks)
        replayed = [r for r in caplog.records if getattr(r, "action", None) == "recovered"]
        assert len(replayed) == 3
        assert all(" 0 missed" not in r.getMessage() for r in replayed), \
            [r.getMessage() for r in replayed]


@needs_node
async def test_500_missed_events_arrive_once_in_order(store_url: str, transport: str) -> None:
    async with running(store_url) as server, js_client(
            server.url, transport=transport, reconnection=False) as js:
        await js.wait_connects(1)
        await server.emit_many(0, 1)
        await js.wait_events(1, "tick")
        await drop_js(server, js)
        await server.emit_many(1, 501)
        await js.send("connect")
        assert (await js.wait_connects(2))["recovered"] is True
        await server.emit_many(501, 503)
        await end_marker(server, js)
        ticks = js.events("tick")
        assert payloads(ticks) == list(range(503))
        assert_stored(ticks)


@needs_node
async def test_client_that_never_got_an_event_recovers(store_url: str, transport: str) -> None:
    async with running(store_url) as server, js_client(
            server.url, transport=transport, reconnection=False) as js:
        sid = (await js.wait_connects(1))["id"]
        await server.until(lambda: server.connects, "the server's connect handler")
        await drop_js(server, js)  # it holds a pid but no offset
        await server.emit_many(0, 3)
        await js.send("connect")
        again = await js.wait_connects(2)
        assert (again["id"], again["recovered"]) == (sid, True)
        await server.emit_many(3, 4)
        await end_marker(server, js)
        assert payloads(js.events("tick")) == [0, 1, 2, 3]
        assert server.last_connect(sid)["recovered"] is True


@needs_node
async def test_two_namespaces_on_one_connection_each_recover_their_events(
        store_url: str, transport: str) -> None:
    namespaces = ("/", "/chat")
    async with running(store_url) as server, js_client(
            server.url, transport=transport, namespaces=namespaces, reconnection=False) as js:
        first = {ns: await js.wait_connects(1, ns) for ns in namespaces}
        await server.until(lambda: len(server.connects) == 2, "two connect handlers")
        await server.emit_many(0, 1, namespace="/")
        await server.emit_many(100, 101, namespace="/chat")
        await js.wait_events(1, "tick", "/")
        await js.wait_events(1, "tick", "/chat")

        await drop_js(server, js, namespaces)
        await server.emit_many(1, 4, namespace="/")
        await server.emit_many(101, 106, namespace="/chat")
        # one connect reopens the Manager; the /chat Socket is still active and sends its
        # CONNECT when the Manager opens (a `connect` for /chat too could send a second)
        await js.send("connect", ns="/")
        for ns in namespaces:
            again = await js.wait_connects(2, ns)
            assert again["id"] == first[ns]["id"], ns
            assert again["recovered"] is True, ns
            assert server.last_connect(again["id"], ns)["recovered"] is True
        await server.emit_many(4, 5, namespace="/")
        await server.emit_many(106, 107, namespace="/chat")
        await end_marker(server, js, "/")
        await end_marker(server, js, "/chat")

        assert payloads(js.events("tick", "/")) == list(range(5))
        assert payloads(js.events("tick", "/chat")) == list(range(100, 107))
        assert_stored(js.events("tick", "/") + js.events("tick", "/chat"))


@needs_node
async def test_acked_and_volatile_emits_carry_no_offset_and_are_not_replayed(
        store_url: str, transport: str) -> None:
    async with running(store_url) as server, js_client(
            server.url, transport=transport, reconnection=False) as js:
        sid = (await js.wait_connects(1))["id"]
        await server.until(lambda: server.connects, "the server's connect handler")
        sio = server.sio
        await sio.emit("tick", 0, to=ROOM)

        reply = await asyncio.wait_for(sio.call("ask", {"q": 1}, to=sid, timeout=WAIT), WAIT)
        acked: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        await sio.emit("ask2", (1, "two"), to=sid,
                       callback=lambda *args: acked.done() or acked.set_result(args))
        callback_args = await asyncio.wait_for(acked, WAIT)
        await sio.emit("vol", {"v": 1}, to=sid, volatile=True)
        await sio.emit("vol", [2], to=ROOM, volatile=True)
        await sio.emit("tick", 1, to=ROOM)
        await end_marker(server, js)

        # what the JS handlers got is exactly what was emitted: no trailing offset
        ask = js.events("ask")
        assert [(e["args"], e["ack"]) for e in ask] == [([{"q": 1}], True)]
        ask2 = js.events("ask2")
        assert [(e["args"], e["ack"]) for e in ask2] == [([1, "two"], True)]
        assert [e["args"] for e in js.events("vol")] == [[{"v": 1}], [[2]]]
        # and the acks reached the server
        assert list(reply) == ["ack", {"q": 1}]
        assert list(callback_args) == ["ack", 1, "two"]
        assert_stored(js.events("tick"))

        # they do not confuse the JS client's last offset, and are never replayed
        await drop_js(server, js)
        await sio.emit("tick", 2, to=ROOM)
        await js.send("connect")
        assert (await js.wait_connects(2))["recovered"] is True
        await end_marker(server, js)
        assert payloads(js.events("tick")) == [0, 1, 2]
        assert len(js.events("ask")) == len(js.events("ask2")) == 1
        assert len(js.events("vol")) == 2


@needs_node
async def test_js_client_emits_and_acks_reach_the_server(store_url: str, transport: str) -> None:
    async with running(store_url) as server, js_client(server.url, transport=transport) as js:
        await js.wait_connects(1)
        start = js.mark()
        await js.send("emit", event="hello", args=[{"n": 1}, "x"])
        await js.send("emit_ack", event="question", args=[42], ref="q1")
        answer = await js.wait_line("ack", start, ref="q1")
        assert answer["args"] == ["echo", 42]
        assert ("/", "hello", ({"n": 1}, "x")) in server.received


@needs_node
async def test_deliberate_disconnect_then_connect_is_a_new_session(
        store_url: str, transport: str) -> None:
    async with running(store_url) as server, js_client(server.url, transport=transport) as js:
        sid = (await js.wait_connects(1))["id"]
        await server.emit_many(0, 1)
        await js.wait_events(1, "tick")
        start = js.mark()
        await js.send("disconnect")
        left = await js.wait_line("disconnect", start)
        assert left["reason"] == "io client disconnect"
        await server.wait_gone(sid)
        await server.emit_many(1, 2)  # nobody is in the room now: lost, as it should be

        await js.send("connect")  # the same Socket object: it sends its old pid and offset
        again = await js.wait_connects(2)
        assert again["recovered"] is False
        assert again["id"] != sid
        seen = server.last_connect(again["id"])
        assert seen["recovered"] is False
        # why it got a fresh session (known only once the CONNECT reply went out, not yet
        # inside the connect handler)
        assert server.sio.recovery_failure(again["id"]) is RecoveryFailure.UNKNOWN_SESSION
        assert seen["rooms"] == {again["id"]}
        assert seen["session"] == {}
        await server.emit_many(2, 3)
        await end_marker(server, js)
        assert payloads(js.events("tick")) == [0, 2]


# -- our Python client against the same server -------------------------------------


class PyPeer:
    """A durable_adapter.AsyncClient whose handlers record what they get."""

    def __init__(self, reconnection: bool) -> None:
        self.client = durable_adapter.AsyncClient(
            reconnection=reconnection, reconnection_delay=0.1, reconnection_delay_max=0.2)
        self.ticks = Inbox()
        self.connected = Inbox()  # is_recovered() at each connect
        self.client.on("tick", lambda *args: self.ticks.put(args))
        self.client.on("connect", lambda: self.connected.put(self.client.is_recovered()))

    async def connect(self, url: str, transport: str) -> None:
        await asyncio.wait_for(self.client.connect(
            url, transports=[transport], auth={"user": "bob"}, wait_timeout=WAIT / 2), WAIT)

    async def wait_disconnected(self) -> None:
        deadline = time.monotonic() + WAIT
        while self.client.connected:
            assert time.monotonic() < deadline, "the client did not notice its drop"
            await asyncio.sleep(0.01)


async def test_python_client_recovers_by_itself_after_an_abrupt_close(
        store_url: str, transport: str) -> None:
    async with running(store_url) as server:
        peer = PyPeer(reconnection=True)
        await peer.connect(server.url, transport)
        try:
            sid = peer.client.get_sid()
            await server.emit_many(0, 2)
            await peer.ticks.wait_for(2)
            await drop_transport(peer.client)
            await server.emit_many(2, 6)  # before or while it comes back
            assert await peer.connected.wait_for(2) == [False, True]
            assert peer.client.get_sid() == sid
            await server.emit_many(6, 8)
            await peer.ticks.wait_for(8)
            assert peer.ticks.items == [(i,) for i in range(8)], "offsets must be stripped"
            seen = server.last_connect(sid)
            assert seen["recovered"] is True
            assert seen["session"] == {"user": "bob", "namespace": "/"}
            assert ROOM in seen["rooms"]
        finally:
            await asyncio.wait_for(peer.client.disconnect(), WAIT)


async def test_python_client_gets_events_missed_while_away(
        store_url: str, transport: str) -> None:
    # 50 missed events over polling come in one long-poll response: more than the 16
    # packets python-engineio's client accepts by default (our client raises that)
    async with running(store_url) as server:
        peer = PyPeer(reconnection=False)
        await peer.connect(server.url, transport)
        try:
            sid = peer.client.get_sid()
            await server.emit_many(0, 1)
            await peer.ticks.wait_for(1)
            await drop_transport(peer.client)
            await peer.wait_disconnected()
            await server.wait_gone(sid)
            await server.emit_many(1, 51)  # surely missed: nobody reconnects yet
            await peer.connect(server.url, transport)
            assert peer.connected.items == [False, True]
            assert peer.client.get_sid() == sid
            await server.emit_many(51, 52)
            await peer.ticks.wait_for(52)
            assert peer.ticks.items == [(i,) for i in range(52)]
            assert server.last_connect(sid)["recovered"] is True
        finally:
            await asyncio.wait_for(peer.client.disconnect(), WAIT)
