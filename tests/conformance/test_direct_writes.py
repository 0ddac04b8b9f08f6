"""Frames written straight to websockets (``durable_adapter._direct``) keep every client's
order: against what python-engineio's queue still holds (packets sent through it, pings),
on websocket and long-polling clients, under aiohttp and ASGI (uvicorn)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from aiohttp import web
from engineio import packet as eio_packet

import durable_adapter
from tests._harness import WAIT, until
from tests._raw import RawSocket, payload

PACKETS = 400  # numbered packets each client must get once, in order
WEBSOCKET_CLIENTS = 12
POLLING_CLIENTS = 4
BIG_PACKETS = 3000  # of 4 kB each: more than a stalled socket's buffers hold
PING_INTERVAL = 0.05  # seconds: pings keep landing in the queues during the emits


def server(async_mode: str, ping_interval: float = PING_INTERVAL
           ) -> durable_adapter.AsyncServer:
    sio = durable_adapter.AsyncServer(
        store="memory://", async_mode=async_mode, connection_state_recovery={},
        ping_interval=ping_interval, ping_timeout=WAIT)

    @sio.on("connect")
    async def connect(sid: str, environ: Any, auth: Any) -> None:
        await sio.enter_room(sid, "all")

    return sio


@asynccontextmanager
async def served(sio: durable_adapter.AsyncServer, async_mode: str) -> AsyncIterator[str]:
    """``sio`` on 127.0.0.1 under aiohttp or uvicorn (ASGI); yields its URL."""
    if async_mode == "aiohttp":
        app = web.Application()
        sio.attach(app)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await sio.shutdown()
            await runner.cleanup()
        return
    config = uvicorn.Config(durable_adapter.ASGIApp(sio), host="127.0.0.1", port=0,
                            ws="wsproto", lifespan="off", log_level="warning")
    uv = uvicorn.Server(config)
    task = asyncio.ensure_future(uv.serve())
    try:
        await until(lambda: uv.started or task.done(), "uvicorn started")
        port = uv.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await sio.shutdown()
        uv.should_exit = True
        await asyncio.wait_for(task, WAIT)


class Counter:
    """A client that records the numbers it gets (ours: a stock client refuses a
    long-poll response of more than 16 packets)."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.client = durable_adapter.AsyncClient(reconnection=False)
        self.got: list[int] = []
        self.client.on("n", self._record)

    def _record(self, number: Any, *offset: Any) -> None:
        self.got.append(number[0] if isinstance(number, list) else number)

    async def connect(self, url: str) -> None:
        await self.client.connect(url, transports=[self.transport], wait_timeout=WAIT)


async def interleaved(sio: durable_adapter.AsyncServer, count: int,
                      every: Callable[[int], bool]) -> None:
    """Numbers 0..count-1 to everyone, in order from one task: stored emits (which may be
    written directly) and, where ``every(n)``, an event put in each socket's
    python-engineio queue (as its pings are), never written directly."""
    for n in range(count):
        if not every(n):
            await sio.emit("n", n, to="all")
            continue
        for eio_sid in list(sio.eio.sockets):
            await sio.eio.send_packet(eio_sid, eio_packet.Packet(eio_packet.MESSAGE,
                                                                 f'2["n",{n}]'))
        if n % 50 == 49:
            await asyncio.sleep(PING_INTERVAL)  # pings come due meanwhile


@pytest.mark.parametrize("async_mode", ["aiohttp", "asgi"])
async def test_every_client_gets_every_packet_once_in_order_amid_queued_ones_and_pings(
        async_mode: str) -> None:
    sio = server(async_mode)
    async with served(sio, async_mode) as url:
        clients = [Counter("websocket") for _ in range(WEBSOCKET_CLIENTS)] + \
                  [Counter("polling") for _ in range(POLLING_CLIENTS)]
        await asyncio.gather(*(c.connect(url) for c in clients))
        try:
            direct = sio.durable_manager.direct
            assert direct is not None and direct.enabled
            await interleaved(sio, PACKETS, every=lambda n: n % 7 == 3)
            expected = list(range(PACKETS))
            await until(lambda: all(len(c.got) >= PACKETS for c in clients),
                        lambda: f"counts {[len(c.got) for c in clients]}")
            for c in clients:
                assert c.got == expected, f"{c.transport} client out of order or incomplete"
            # both paths ran: frames went straight to the websockets, and others waited
            # behind what the queues held
            assert direct.direct > 0
            assert direct.queued > 0
        finally:
            await asyncio.gather(*(c.client.disconnect() for c in clients),
                                 return_exceptions=True)


async def test_without_direct_writes_every_packet_goes_through_the_queue() -> None:
    sio = server("aiohttp")
    async with served(sio, "aiohttp") as url:
        direct = sio.durable_manager.direct
        assert direct is not None
        direct.enabled = False
        client = Counter("websocket")
        await client.connect(url)
        try:
            await interleaved(sio, 50, every=lambda n: False)
            await until(lambda: len(client.got) >= 50, "50 packets")
            assert client.got == list(range(50))
            assert direct.direct == 0
        finally:
            await client.client.disconnect()


async def test_a_client_that_stops_reading_stalls_no_one_and_later_gets_everything_in_order(
        ) -> None:
    # no pings meanwhile: one stuck behind the full transport in python-engineio's
    # writer would (rightly) send everything after it through the queue
    sio = server("aiohttp", ping_interval=WAIT * 6)
    async with served(sio, "aiohttp") as url:
        reader = Counter("websocket")
        await reader.connect(url)
        stalled = await RawSocket.open(url)
        try:
            await stalled.connect()
            direct = sio.durable_manager.direct
            assert direct is not None
            # more than the loopback's buffers hold: the stalled socket's transport
            # fills and a direct write has to wait for it to drain
            pad = "x" * 4000
            for n in range(BIG_PACKETS):
                await asyncio.wait_for(sio.emit("n", [n, pad], to="all"), WAIT)
            await until(lambda: len(reader.got) >= BIG_PACKETS,
                        lambda: f"{len(reader.got)} packets at the reading client")
            assert reader.got == list(range(BIG_PACKETS))
            assert direct.drained > 0, "the stalled socket's transport never filled"
            got: list[int] = []
            while len(got) < BIG_PACKETS:
                frame = await stalled.next_frame()
                assert frame is not None, f"closed after {len(got)} packets"
                event, (number, _), _offset = payload(frame)
                assert event == "n"
                got.append(number)
            assert got == list(range(BIG_PACKETS))
        finally:
            await stalled.close()
            await reader.client.disconnect()
