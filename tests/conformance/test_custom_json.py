"""python-socketio's ``json=`` option: a payload only the server's JSON module can encode
(a ``datetime``) is stored, sent live and replayed byte for byte as stock python-socketio
sends it, by the server and by the emitters, and session data goes through the same module.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from engineio import packet as eio_packet
from socketio import packet as sio_packet

import durable_adapter
from tests._harness import serving, until
from tests._raw import RawSocket, payload
from tests.conformance.conftest import STORE_FACTORIES, StoreMaker, StoreSpec, make_store

AT = datetime.datetime(2026, 12, 7, 19, 30, 5, 123456, tzinfo=datetime.UTC)


def _dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(obj, default=_iso, **kwargs)


def _iso(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


#: a json module as python-socketio users write one: dumps with a default() for datetimes
datetime_json = SimpleNamespace(dumps=_dumps, loads=json.loads)


@pytest.fixture(autouse=True)
def restore_packet_json() -> Iterator[None]:
    """``AsyncServer(json=...)`` sets python-socketio's and python-engineio's packet
    classes' module for the whole process: put the standard one back after the test."""
    saved = sio_packet.Packet.json, eio_packet.Packet.json
    yield
    sio_packet.Packet.json, eio_packet.Packet.json = saved


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreSpec]:
    spec = STORE_FACTORIES[request.param](tmp_path)
    yield spec
    if isinstance(spec, StoreMaker):
        spec.cleanup()


def stock_frame(data: list[Any], offset: str) -> str:
    """What stock python-socketio, configured with ``datetime_json``, sends for an emit
    of ``data``, with the offset the recovery protocol appends as one more argument."""
    encoded = sio_packet.Packet(sio_packet.EVENT, namespace="/", data=data).encode()
    assert isinstance(encoded, str) and encoded.endswith("]")
    return f'4{encoded[:-1]},"{offset}"]'


def offset_of(frame: str) -> str:
    offset = json.loads(frame[frame.index("["):])[-1]  # after "42" or "451-"
    assert isinstance(offset, str)
    return offset


async def next_event(raw: RawSocket) -> str:
    while True:
        frame = await raw.next_frame()
        assert frame is not None, "the server closed the socket"
        if frame.startswith(("42", "45")):  # an EVENT, or a BINARY_EVENT before its parts
            return frame


def server(spec: StoreSpec) -> durable_adapter.AsyncServer:
    sio = durable_adapter.AsyncServer(
        store=make_store(spec), async_mode="aiohttp", json=datetime_json,
        # no frames kept in memory: every replay reads the store and encodes again
        connection_state_recovery={"max_disconnection_duration": 60,
                                   "history_cache_bytes": 0})

    @sio.on("remember")
    async def remember(sid: str) -> str:
        await sio.save_session(sid, {"since": AT})
        return "saved"

    return sio


async def test_datetime_payload_and_session_live_and_replayed_as_stock(
        store_spec: StoreSpec) -> None:
    sio = server(store_spec)
    async with serving(sio) as url:
        raw = await RawSocket.open(url)
        reply = payload(await raw.connect(auth={}))
        sid, pid = reply["sid"], reply["pid"]
        await raw.send('421["remember"]')
        assert await raw.next_frame() == '431["saved"]'

        await sio.emit("news", "before")
        before = offset_of(await next_event(raw))
        await sio.emit("news", {"at": AT}, to=sid)
        live = await next_event(raw)
        assert live == stock_frame(["news", {"at": AT}], offset_of(live))
        assert '"at":"2026-12-07T19:30:05.123456+00:00"' in live

        await raw.close()
        await until(lambda: not sio.manager.is_connected(sid, "/"), "the server saw the drop")
        await sio.emit("news", [AT, b"\x00\x01"])  # a binary part beside it

        back = await RawSocket.open(url)
        try:
            reply = payload(await back.connect(auth={"pid": pid, "offset": before}))
            assert reply["sid"] == sid, "not recovered"
            assert await next_event(back) == live  # replayed from the store, same bytes
            away = await next_event(back)
            attachment = await back.ws.receive_bytes()
            expected = sio_packet.Packet(sio_packet.EVENT, namespace="/",
                                         data=["news", [AT, b"\x00\x01"]]).encode()
            assert away == f'4{expected[0][:-1]},"{offset_of(away)}"]'
            assert attachment == b"\x00\x01"
            # the session went through the server's json module: its text form comes back
            assert await sio.get_session(sid) == {"since": AT.isoformat()}
        finally:
            await back.close()


@pytest.mark.parametrize("store_spec", ["sqlite", "postgres", "redis"], indirect=True)
async def test_emitters_take_the_servers_json_module(store_spec: StoreSpec) -> None:
    sio = server(store_spec)
    async with serving(sio) as url:
        raw = await RawSocket.open(url)
        reply = payload(await raw.connect(auth={}))
        sid, pid = reply["sid"], reply["pid"]
        async with durable_adapter.AsyncEmitter(make_store(store_spec),
                                                json=datetime_json) as emitter:
            await emitter.emit("news", "before")
            before = offset_of(await next_event(raw))
            await emitter.emit("news", {"at": AT}, to=sid)
            live = await next_event(raw)
            assert live == stock_frame(["news", {"at": AT}], offset_of(live))

            await raw.close()
            await until(lambda: not sio.manager.is_connected(sid, "/"),
                        "the server saw the drop")
        spec = make_store(store_spec)

        def sync_emit() -> None:  # in a thread, as sync code runs it
            with durable_adapter.Emitter(spec, json=datetime_json) as emitter:
                emitter.emit("news", {"away": AT})

        await asyncio.to_thread(sync_emit)

        back = await RawSocket.open(url)
        try:
            reply = payload(await back.connect(auth={"pid": pid, "offset": before}))
            assert reply["sid"] == sid, "not recovered"
            assert await next_event(back) == live
            away = await next_event(back)
            assert away == stock_frame(["news", {"away": AT}], offset_of(away))
        finally:
            await back.close()
