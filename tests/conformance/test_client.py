"""The Python client's side of recovery: what its handlers see, and what it keeps.

Store-independent, so it runs on the memory store (plus a scripted server where the order
of packets on the wire is the point).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import engineio.async_client
import engineio.payload
import pytest
from aiohttp import web

import durable_adapter
from tests._harness import WAIT, Inbox, drop_transport, serving, serving_app, until
from tests.conformance.conftest import Peer, running

EPOCH = "0123456789abcdef"


async def test_a_trailing_string_that_is_no_offset_reaches_the_handler() -> None:
    async with running("memory://") as node:
        peer = Peer(events=("tick", "typing"))
        await peer.connect(node.url)
        await node.sio.emit("tick", "stored")
        await peer.inbox["/"].wait_for(1)
        offset = peer.client.last_offset()
        assert offset is not None
        # volatile emits carry no offset: their last argument is the application's
        await node.sio.emit("typing", "alice", volatile=True)
        await node.sio.emit("typing", ("bob", "12"), volatile=True)
        assert await peer.inbox["/"].wait_for(3) == ["stored", "alice", ("bob", "12")]
        assert peer.client.last_offset() == offset
        await peer.client.disconnect()


async def test_a_replay_bigger_than_engineio_payload_limit_arrives_over_long_polling(
        ) -> None:
    limit = engineio.payload.Payload.max_decode_packets
    # a short ping interval: a long-poll left open by the aborted client ends quickly
    sio = durable_adapter.AsyncServer(
        store="memory://", async_mode="aiohttp", ping_interval=0.5, ping_timeout=2,
        connection_state_recovery={"max_disconnection_duration": 30})
    async with serving(sio) as url:
        peer = Peer()
        await peer.connect(url)
        sid = peer.sid()
        state = peer.client.recovery_state()
        await drop_transport(peer.client)
        async with asyncio.timeout(WAIT):
            while sio.manager.is_connected(sid, "/"):  # noqa: ASYNC110 - until saved
                await asyncio.sleep(0.01)
        await peer.close()
        missed = list(range(limit * 3))
        for i in missed:
            await sio.emit("tick", i)

        again = Peer()
        await again.connect(url, state, transport="polling")
        assert again.client.is_recovered()
        assert await again.inbox["/"].wait_for(len(missed)) == missed
        await again.close()  # a long-polling disconnect waits for the server's next poll
    # the raised limit was this client's: engineio's servers and other clients keep theirs
    assert engineio.payload.Payload.max_decode_packets == limit
    too_many = "\x1e".join(["4hello"] * (limit + 1))
    for payload_class in (engineio.payload.Payload, engineio.async_client.payload.Payload):
        with pytest.raises(ValueError, match="Too many packets"):
            payload_class(encoded_payload=too_many)


# -- a scripted Engine.IO / Socket.IO server (websocket only) ---------------------------

Script = Callable[[web.WebSocketResponse], Awaitable[None]]


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[str]:
    """Serves one websocket: the Engine.IO handshake, then ``script`` writes the frames."""
    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        handshake = {"sid": "eio-sid", "upgrades": [], "pingInterval": 25000,
                     "pingTimeout": 20000, "maxPayload": 1_000_000}
        await ws.send_str("0" + json.dumps(handshake))
        await script(ws)
        async for _ in ws:  # until the client leaves
            pass
        return ws

    app = web.Application()
    app.router.add_get("/socket.io/", handle)
    async with serving_app(app) as url:
        yield url


async def receive_until(ws: web.WebSocketResponse, prefix: str) -> None:
    """Reads frames until one starts with ``prefix`` ("40": a CONNECT to "/", "3": a pong)."""
    async with asyncio.timeout(WAIT):
        while not (await ws.receive_str()).startswith(prefix):
            pass


def event(value: str, seq: int) -> str:
    return "42" + json.dumps(["tick", value, f"{EPOCH}-{seq}"])


async def run_held_events(handled: int, *, fail_on: str | None = None
                          ) -> tuple[list[str], str | None]:
    """A server sends two events before its CONNECT reply, two while the app's connect
    handler awaits, then one more. Returns what the app's handler got (once it got
    ``handled``) and the client's last offset. ``fail_on``: the handler raises for it."""
    live_read = asyncio.Event()

    async def script(ws: web.WebSocketResponse) -> None:
        await receive_until(ws, "40")
        await ws.send_str(event("missed 1", 1))
        await ws.send_str(event("missed 2", 2))
        await ws.send_str("40" + json.dumps({"sid": "sio-sid", "pid": "P" * 32}))
        await ws.send_str(event("live 3", 3))
        await ws.send_str(event("live 4", 4))
        # engineio answers a ping after handing the frames before it to python-socketio
        await ws.send_str("2")
        await receive_until(ws, "3")
        live_read.set()
        await ws.send_str(event("live 5", 5))

    inbox = Inbox()

    def tick(value: str) -> None:
        if value == fail_on:
            raise RuntimeError("a bug in the application's handler")
        inbox.put(value)

    client = durable_adapter.AsyncClient(reconnection=False)
    client.on("tick", tick)
    client.on("connect", live_read.wait)  # the app awaits something while events come in
    async with scripted_server(script) as url:
        await client.connect(url, transports=["websocket"], wait_timeout=WAIT)
        got = list(await inbox.wait_for(handled))
        offset = client.last_offset()
        await client.disconnect()
    return got, offset


async def test_events_before_the_connect_reply_come_first_and_in_order() -> None:
    """A server may send missed events before its CONNECT reply (the JS one does); live
    events arriving while the app's connect handler awaits must not overtake them."""
    got, offset = await run_held_events(5)
    assert got == ["missed 1", "missed 2", "live 3", "live 4", "live 5"]
    assert offset == f"{EPOCH}-5"


async def test_a_failing_handler_loses_only_its_own_held_event(
        caplog: pytest.LogCaptureFixture) -> None:
    got, offset = await run_held_events(4, fail_on="missed 1")
    assert got == ["missed 2", "live 3", "live 4", "live 5"]
    assert offset == f"{EPOCH}-5"
    assert "a bug in the application's handler" in caplog.text


async def test_events_arriving_while_the_client_leaves_keep_their_offset_stripped() -> None:
    """``disconnect()`` forgets what it would recover with before the transport closes;
    an event still arriving meanwhile must reach the handler as the server emitted it,
    never with the offset as an extra argument."""
    async def script(ws: web.WebSocketResponse) -> None:
        await receive_until(ws, "40")
        await ws.send_str("40" + json.dumps({"sid": "sio-sid", "pid": "P" * 32}))
        await ws.send_str(event("live 1", 1))
        await receive_until(ws, "41")  # the client is leaving: its read loop still runs
        for seq in range(2, 6):
            await ws.send_str(event(f"late {seq}", seq))
        await ws.send_str("2")  # answered only once the frames before it were handled
        with contextlib.suppress(Exception):
            await receive_until(ws, "3")

    calls: list[tuple[Any, ...]] = []
    first = asyncio.Event()

    def tick(*args: Any) -> None:
        calls.append(args)
        first.set()

    client = durable_adapter.AsyncClient(reconnection=False)
    client.on("tick", tick)
    async with scripted_server(script) as url:
        await client.connect(url, transports=["websocket"], wait_timeout=WAIT)
        await asyncio.wait_for(first.wait(), WAIT)
        close = client.eio.disconnect

        async def slow_close(*args: Any, **kwargs: Any) -> None:
            # a transport slow to close: the late events come in first
            await until(lambda: len(calls) == 5, "the late events")
            await close(*args, **kwargs)

        client.eio.disconnect = slow_close
        await client.disconnect()
    assert [args for args in calls] == [("live 1",), *((f"late {s}",) for s in range(2, 6))]
