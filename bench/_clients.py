"""A benchmark client process: holds many Socket.IO clients, driven by JSON lines.

``python bench/_clients.py`` reads one JSON command per line on stdin and answers each
with one JSON line on stdout. Clients use the websocket transport with compression off
(aiohttp's ``compress=0``: permessage-deflate is not offered, so not negotiated; each
connection's negotiated ``compress`` is checked and reported). Two kinds of client:

* ``raw`` (:class:`RawMember`): the Socket.IO protocol spoken directly over an aiohttp
  websocket, parsing every event, keeping pid and offset as the official client does;
  light enough that the server, not the clients, is what a benchmark measures.
* ``sio``: python-socketio's ``AsyncClient`` (``durable_adapter.AsyncClient`` for our
  server) with ``websocket_extra_options={"compress": 0}``.

Commands (``cmd`` key):

* ``connect`` ``{url, n, room, durable, where, client, at_once}``: connect ``n`` more
  clients of kind ``client`` (``durable``: track offsets / use
  ``durable_adapter.AsyncClient``), ``at_once`` (25) at a time; ``where`` asks each which
  server process holds it.
* ``calls`` ``{events, repeat}``: every client, concurrently with the others, calls
  (emits with an ack, awaited) each event of ``events`` in turn with argument ``i``,
  for ``i`` in ``range(repeat)``; answers the calls made.
* ``disconnect``: every client leaves on purpose (DISCONNECT packet), and is forgotten.
* ``arm`` ``{total}``: each client notes the time its count of ``ev`` events reaches
  ``total`` (counted since that client object was created).
* ``wait`` ``{within}``: wait until every client reached its total; answers the
  ``time.monotonic()`` at which each did (None if not) and the counts.
* ``drop``: close every transport abruptly (a network loss: no DISCONNECT), keeping
  each client's pid and offset.
* ``reconnect`` ``{url, total, spread}``: new clients with the saved pid and offset
  connect all at once (or one after another, evenly over ``spread`` seconds); each
  notes when it started to connect, connected and received ``total`` events.
* ``latency``: per server process, the delays (arrival minus stamp) of stamped events.
* ``close``: disconnect everyone and exit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import defaultdict
from typing import Any

import aiohttp
import socketio

import durable_adapter

CONNECT_WAIT = 30.0  # seconds a connect may take
CONNECT_AT_ONCE = 25  # concurrent connects when building up (not for reconnect)


class Member:
    def __init__(self, durable: bool, state: dict[str, Any] | None = None) -> None:
        options = {"reconnection": False, "websocket_extra_options": {"compress": 0}}
        self.client: Any = (durable_adapter.AsyncClient(**options) if durable
                            else socketio.AsyncClient(**options))
        if state and state.get("pid"):
            self.client.load_recovery_state({"/": state})
        self.durable = durable
        self.count = 0
        self.target: int | None = None
        self.done_at: float | None = None
        self.started_at: float | None = None
        self.connected_at: float | None = None
        self.node = ""
        self.delays: list[float] = []
        self.client.on("ev", self.on_ev)

    def on_ev(self, payload: dict[str, Any], *rest: Any) -> None:
        self.count += 1
        if "t" in payload:
            self.delays.append(time.monotonic() - payload["t"])
        if self.count == self.target:
            self.done_at = time.monotonic()

    async def connect(self, url: str, room: str | None) -> None:
        self.started_at = time.monotonic()
        await asyncio.wait_for(self.client.connect(
            url, transports=["websocket"], auth={"room": room} if room else None,
            wait_timeout=CONNECT_WAIT), CONNECT_WAIT)
        self.connected_at = time.monotonic()

    def compress(self) -> int:
        ws = getattr(self.client.eio, "ws", None)
        return int(getattr(ws, "compress", 0) or 0)

    async def call(self, event: str, within: float, *args: Any) -> Any:
        return await self.client.call(event, *args[:1], timeout=within)

    def is_recovered(self) -> bool:
        return bool(self.durable and self.client.is_recovered())

    def recovery_state(self) -> dict[str, Any]:
        return dict(self.client.recovery_state().get("/", {}))

    async def drop(self) -> None:
        """Close the websocket without a DISCONNECT packet, as a network loss would."""
        await self.client.eio.ws.close()
        try:
            await asyncio.wait_for(self.client.eio.disconnect(abort=True), 5)
        except Exception:  # already gone
            pass
        await self.aclose()

    async def disconnect(self) -> None:
        try:
            await asyncio.wait_for(self.client.disconnect(), 5)
        except Exception:
            pass
        await self.aclose()

    async def aclose(self) -> None:
        http = getattr(self.client.eio, "http", None)
        if http is not None and not http.closed:
            await http.close()


class RawMember:
    """A minimal Socket.IO v5 / Engine.IO v4 client over one aiohttp websocket.

    It speaks what the official JS client sends (``40{auth, pid, offset}``), answers
    pings, parses every EVENT (JSON) and keeps the last offset, at a fraction of the
    CPU of python-socketio's client, so a few client processes can keep up with the
    server being measured.
    """

    def __init__(self, durable: bool, state: dict[str, Any] | None = None) -> None:
        self.durable = durable
        self.pid: str | None = (state or {}).get("pid")
        self.offset: str | None = (state or {}).get("offset")
        self.sent_pid = self.pid
        self.count = 0
        self.target: int | None = None
        self.done_at: float | None = None
        self.started_at: float | None = None
        self.connected_at: float | None = None
        self.node = ""
        self.delays: list[float] = []
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self.next_ack = 0

    async def connect(self, url: str, room: str | None) -> None:
        self.started_at = time.monotonic()
        self.http = aiohttp.ClientSession()
        ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws = await self.http.ws_connect(ws_url, compress=0, max_msg_size=0)
        opening = await asyncio.wait_for(self.ws.receive_str(), CONNECT_WAIT)
        if not opening.startswith("0"):
            raise RuntimeError(f"unexpected Engine.IO open: {opening[:80]!r}")
        auth: dict[str, Any] = {"room": room} if room else {}
        if self.pid is not None:
            auth["pid"] = self.pid
            if self.offset is not None:
                auth["offset"] = self.offset
        await self.ws.send_str("40" + json.dumps(auth))
        self.reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self.connected.wait(), CONNECT_WAIT)
        self.connected_at = time.monotonic()

    async def _read(self) -> None:
        assert self.ws is not None
        ws = self.ws
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data: str = msg.data
            if data.startswith("42"):
                args = json.loads(data[2:])
                if self.durable and len(args) > 2 and isinstance(args[-1], str):
                    self.offset = args[-1]
                self.on_ev(args[1])
            elif data == "2":
                await ws.send_str("3")
            elif data.startswith("43"):
                body = data[2:]
                split_at = body.index("[")
                future = self.acks.pop(int(body[:split_at]), None)
                if future is not None and not future.done():
                    future.set_result(json.loads(body[split_at:]))
            elif data.startswith("40"):
                reply = json.loads(data[2:] or "{}")
                pid = reply.get("pid")
                if not isinstance(pid, str):  # a server without recovery
                    self.pid, self.offset = None, None
                elif pid != self.pid:
                    self.pid, self.offset = pid, None
                self.connected.set()
            elif data.startswith("44"):
                raise RuntimeError(f"connection refused: {data}")

    def on_ev(self, payload: Any) -> None:
        self.count += 1
        if isinstance(payload, dict) and "t" in payload:
            self.delays.append(time.monotonic() - payload["t"])
        if self.count == self.target:
            self.done_at = time.monotonic()

    async def call(self, event: str, within: float, *args: Any) -> Any:
        assert self.ws is not None
        self.next_ack += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks[self.next_ack] = future
        await self.ws.send_str(f"42{self.next_ack}" + json.dumps([event, *args]))
        answer = await asyncio.wait_for(future, within)
        return answer[0]

    def is_recovered(self) -> bool:
        return self.sent_pid is not None and self.pid == self.sent_pid

    def recovery_state(self) -> dict[str, Any]:
        return {"pid": self.pid, "offset": self.offset}

    def compress(self) -> int:
        return int(self.ws.compress) if self.ws is not None else 0

    async def drop(self) -> None:
        """Close the websocket without a DISCONNECT packet, as a network loss would."""
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
        await self.aclose()

    async def disconnect(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.send_str("41")
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
        await self.aclose()

    async def aclose(self) -> None:
        if self.http is not None and not self.http.closed:
            await self.http.close()


KINDS: dict[str, Any] = {"raw": RawMember, "sio": Member}


class Clients:
    def __init__(self) -> None:
        self.members: list[Any] = []
        self.refused: list[Any] = []
        self.room: str | None = None
        self.kind: Any = RawMember

    async def connect(self, url: str, n: int, room: str | None, durable: bool,
                      where: bool, client: str = "raw", at_once: int = CONNECT_AT_ONCE
                      ) -> dict[str, Any]:
        self.room = room
        self.kind = KINDS[client]
        fresh = [self.kind(durable) for _ in range(n)]
        gate = asyncio.Semaphore(at_once)

        async def one(member: Any) -> None:
            async with gate:
                await member.connect(url, room)
                if where:
                    member.node = await member.call("where", within=CONNECT_WAIT)

        await asyncio.gather(*(one(m) for m in fresh))
        self.members.extend(fresh)
        nodes: dict[str, int] = defaultdict(int)
        for member in fresh:
            nodes[member.node] += 1
        return {"connected": len(fresh), "nodes": nodes,
                "compress": max(m.compress() for m in fresh)}

    async def calls(self, events: list[str], repeat: int, within: float = 60.0
                    ) -> dict[str, Any]:
        async def one(member: Any) -> int:
            for i in range(repeat):
                for event in events:
                    await member.call(event, within, i)
            return repeat * len(events)

        made = await asyncio.gather(*(one(m) for m in self.members))
        return {"calls": sum(made)}

    async def disconnect(self) -> dict[str, Any]:
        members, self.members = self.members, []
        await asyncio.gather(*(m.disconnect() for m in members))
        return {"disconnected": len(members)}

    def arm(self, total: int) -> dict[str, Any]:
        for member in self.members:
            member.target, member.done_at = total, None
            if member.count >= total:
                member.done_at = time.monotonic()
        return {"armed": len(self.members)}

    async def wait(self, within: float) -> dict[str, Any]:
        deadline = time.monotonic() + within
        # polling (5 ms) keeps the event handlers free of any bookkeeping but a counter
        while time.monotonic() < deadline and any(  # noqa: ASYNC110
                m.done_at is None for m in self.members):
            await asyncio.sleep(0.005)
        return {"done": [m.done_at for m in self.members],
                "started": [m.started_at for m in self.members],
                "connected": [m.connected_at for m in self.members],
                "counts": [m.count for m in self.members]}

    async def drop(self) -> dict[str, Any]:
        await asyncio.gather(*(m.drop() for m in self.members))
        await asyncio.sleep(0.5)  # handler tasks of events that arrived before the drop
        return {"dropped": len(self.members)}

    async def reconnect(self, url: str, total: int, spread: float = 0.0) -> dict[str, Any]:
        old = self.members
        self.members = [self.kind(m.durable, m.recovery_state()) for m in old]
        for new, previous in zip(self.members, old, strict=True):
            new.node = previous.node
        for member in self.members:
            member.target = total
        # all at once, as after a network outage, or evenly over ``spread`` seconds
        step = spread / len(self.members) if self.members else 0.0

        async def one(i: int, member: Any) -> None:
            if step:
                await asyncio.sleep(i * step)
            await member.connect(url, self.room)

        await asyncio.gather(*(one(i, m) for i, m in enumerate(self.members)))
        connect_ms = [(m.connected_at - m.started_at) * 1000 for m in self.members]
        # a refused one got a fresh session and nothing to replay: leave it out of waits
        self.refused.extend(m for m in self.members if not m.is_recovered())
        self.members = [m for m in self.members if m.is_recovered()]
        return {"recovered": len(self.members), "connect_ms": connect_ms}

    def latency(self) -> dict[str, Any]:
        delays: dict[str, list[float]] = defaultdict(list)
        for member in self.members:
            delays[member.node].extend(member.delays)
            member.delays = []
        return {"delays": delays}

    async def close(self) -> None:
        await asyncio.gather(*(m.disconnect() for m in self.members + self.refused),
                             return_exceptions=True)


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    clients = Clients()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        kind = command.pop("cmd")
        try:
            if kind == "connect":
                answer = await clients.connect(**command)
            elif kind == "calls":
                answer = await clients.calls(**command)
            elif kind == "disconnect":
                answer = await clients.disconnect()
            elif kind == "arm":
                answer = clients.arm(**command)
            elif kind == "wait":
                answer = await clients.wait(**command)
            elif kind == "drop":
                answer = await clients.drop()
            elif kind == "reconnect":
                answer = await clients.reconnect(**command)
            elif kind == "latency":
                answer = clients.latency()
            elif kind == "close":
                await clients.close()
                print(json.dumps({"closed": True}), flush=True)
                return
            else:
                answer = {"error": f"unknown command {kind!r}"}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
