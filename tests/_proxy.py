"""A TCP proxy on 127.0.0.1 in front of a server, that can make its connections half-open.

A mobile client whose network changed leaves its old TCP connection silent but not
closed: the server reads nothing, sends into the void, and finds out only when a ping
times out. :meth:`Link.freeze` makes that happen to one proxied connection: nothing more
is forwarded in either direction and neither socket is closed, even when the client
closes its end. :meth:`Link.cut_client` also resets the client's side, so the client
learns at once that its connection is gone while the server still sees silence. Whatever
arrives meanwhile is held (so :meth:`Link.resume` forwards it, in order, and a stream
stays well formed) and counted, so a test can wait for "the proxy got it" and then check
that the other end got nothing.

New connections go to :attr:`Proxy.upstream` as it is when they are accepted: pointing
it at another node makes a client that reconnects to the same address (the official JS
client, behind a load balancer) land on that node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Direction:
    """One way of a link: what was forwarded, what is held, whether the sender ended."""

    forwarded: int = 0
    held: bytearray = field(default_factory=bytearray)
    ended: bool = False  # the sender closed its end (EOF read)


class Link:
    """One proxied connection: client <-> proxy <-> upstream."""

    def __init__(self, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self._client, self._upstream = client, upstream
        self.up, self.down = _Direction(), _Direction()  # client->server, server->client
        self._flowing = True
        self._changed = asyncio.Event()  # a read, an EOF or a resume: loops re-check
        self._tasks = [
            asyncio.create_task(self._read(client[0], self.up)),
            asyncio.create_task(self._read(upstream[0], self.down)),
            asyncio.create_task(self._forward(upstream[1], self.up)),
            asyncio.create_task(self._forward(client[1], self.down)),
        ]

    @property
    def frozen(self) -> bool:
        return not self._flowing

    def freeze(self) -> None:
        """Forward nothing more, close nothing: both ends see silence."""
        self._flowing = False

    def resume(self) -> None:
        """Forward what was held, then flow again (an EOF held meanwhile follows)."""
        self._flowing = True
        self._changed.set()

    def cut_client(self) -> None:
        """The client's network changed: freeze, and reset the client's side (it sees
        its connection fail at once) while the upstream side stays open and silent."""
        self.freeze()
        self._client[1].transport.abort()

    async def _read(self, reader: asyncio.StreamReader, way: _Direction) -> None:
        # reads on while frozen: the counts show what arrived, nothing goes further
        try:
            while data := await reader.read(65536):
                way.held += data
                self._changed.set()
        except (ConnectionError, OSError):
            pass  # a reset: passed on as a close, as an EOF is
        way.ended = True
        self._changed.set()

    async def _forward(self, writer: asyncio.StreamWriter, way: _Direction) -> None:
        while True:
            await self.until(lambda link: link._flowing and bool(way.held or way.ended),
                             within=None)
            if way.held:
                chunk, way.held = bytes(way.held), bytearray()
                writer.write(chunk)
                way.forwarded += len(chunk)
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.drain()
            elif way.ended:
                # a half-close passed on as one (HTTP clients may half-close)
                with contextlib.suppress(ConnectionError, OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return

    async def until(self, condition: Callable[[Link], bool],
                    within: float | None = 10.0) -> None:
        """Until ``condition(self)`` holds, e.g. ``lambda link: link.up.ended``;
        re-checked on every read, EOF and resume; at most ``within`` seconds."""
        async def _wait() -> None:
            while not condition(self):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), within)

    async def close(self) -> None:
        """Close both sockets and stop forwarding (the far ends see a close now)."""
        for task in self._tasks:
            task.cancel()
        for _, writer in (self._client, self._upstream):
            writer.close()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await task
        for _, writer in (self._client, self._upstream):
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


class Proxy:
    """Listens on 127.0.0.1; each connection it accepts is a :class:`Link` to
    ``127.0.0.1:upstream``."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.links: list[Link] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._accepted = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        try:
            upstream = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()  # nothing listens there: the client sees a refused connection
            return
        self.links.append(Link((reader, writer), upstream))
        self._accepted.set()

    async def wait_links(self, count: int, within: float = 10.0) -> list[Link]:
        """Until ``count`` connections were accepted in all; returns every link."""
        async def _wait() -> None:
            while len(self.links) < count:
                self._accepted.clear()
                await self._accepted.wait()

        await asyncio.wait_for(_wait(), within)
        return self.links

    def freeze(self) -> None:
        """Freeze every connection accepted so far; later ones flow."""
        for link in self.links:
            link.freeze()

    def resume(self) -> None:
        for link in self.links:
            link.resume()

    async def close(self) -> None:
        """Stop listening and close every connection, frozen or not."""
        if self._server is not None:
            self._server.close()
        for link in self.links:
            await link.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Proxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
