"""A websocket that speaks Engine.IO / Socket.IO frame by frame, as a probe would.

It sends what no well-behaved client sends (a second CONNECT on one connection, another
client's pid, frames after being told to close) and shows every frame it gets back.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests._harness import WAIT


def connect_frame(namespace: str = "/", auth: Any = None) -> str:
    """A Socket.IO CONNECT inside an Engine.IO MESSAGE: ``40[/ns,][auth json]``."""
    prefix = "40" if namespace == "/" else f"40{namespace},"
    return prefix + ("" if auth is None else json.dumps(auth))


def payload(frame: str, namespace: str = "/") -> Any:
    """The JSON after the packet type (and namespace) of a Socket.IO frame."""
    body = frame[2:]
    if namespace != "/":
        body = body[len(namespace) + 1:]
    return json.loads(body) if body else None


class RawSocket:
    """One Engine.IO websocket connection; answers pings, keeps every other frame."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse
                 ) -> None:
        self.http, self.ws = http, ws
        self.frames: list[str] = []

    @classmethod
    async def open(cls, url: str) -> RawSocket:
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(
                url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket",
                timeout=aiohttp.ClientWSTimeout(ws_close=WAIT))
        except BaseException:
            await http.close()
            raise
        raw = cls(http, ws)
        opening = await raw.next_frame()
        assert opening is not None and opening.startswith("0"), opening
        return raw

    async def send(self, frame: str) -> None:
        await self.ws.send_str(frame)

    async def next_frame(self, within: float = WAIT) -> str | None:
        """The next frame that is not a ping; None once the server closed the socket."""
        while True:
            message = await asyncio.wait_for(self.ws.receive(), within)
            if message.type != aiohttp.WSMsgType.TEXT:
                return None
            frame: str = message.data
            if frame == "2":
                await self.ws.send_str("3")
                continue
            self.frames.append(frame)
            return frame

    async def connect(self, namespace: str = "/", auth: Any = None) -> str:
        """Send a CONNECT; return the reply: ``40...`` (CONNECT) or ``44...`` (error).

        Frames that come before the reply are kept in :attr:`frames`.
        """
        await self.send(connect_frame(namespace, auth))
        reply_to = ("40", "44") if namespace == "/" else (f"40{namespace},",
                                                         f"44{namespace},")
        while True:
            frame = await self.next_frame()
            assert frame is not None, "closed before the CONNECT reply"
            if frame.startswith(reply_to):
                return frame

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()
