"""The half-open proxy of the fault tests (tests/_proxy.py): a frozen connection delivers
nothing either way and closes nothing, even after the client closed its end."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests._proxy import Proxy

pytestmark = pytest.mark.timeout(30)


@asynccontextmanager
async def listener() -> AsyncIterator[tuple[socket.socket, int]]:
    """A bare listening socket: the test reads the accepted socket without blocking, so
    "nothing arrived, not closed" is a fact of the moment, not a timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    try:
        yield server, server.getsockname()[1]
    finally:
        server.close()


def pending(sock: socket.socket) -> bytes | None:
    """What ``sock`` can read right now: None if nothing (still open), b"" once closed."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None


async def read_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, size - len(data)), 10)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


async def test_frozen_link_keeps_both_sockets_open_and_delivers_nothing() -> None:
    loop = asyncio.get_running_loop()
    async with listener() as (server, port), Proxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        accepted, _ = await asyncio.wait_for(loop.sock_accept(server), 10)
        accepted.setblocking(False)
        with accepted:
            (link,) = await proxy.wait_links(1)
            writer.write(b"before")
            assert await read_exactly(accepted, 6) == b"before"
            await loop.sock_sendall(accepted, b"hi")
            assert await asyncio.wait_for(reader.readexactly(2), 10) == b"hi"

            link.freeze()
            writer.write(b"up while frozen")
            writer.write_eof()  # the client even closes its side
            await loop.sock_sendall(accepted, b"down while frozen")
            # the proxy has read both (and the client's EOF): none of it went on
            await link.until(lambda lk: lk.up.ended and len(lk.down.held) == 17)
            assert pending(accepted) is None, "the server got data or a close"
            assert len(link.up.held) == 15 and link.up.forwarded == 6
            assert reader.at_eof() is False and not reader._buffer  # type: ignore[attr-defined]
            assert link.down.forwarded == 2

            link.resume()  # what was held arrives, in order, then the EOF
            assert await read_exactly(accepted, 15) == b"up while frozen"
            assert await asyncio.wait_for(reader.readexactly(17), 10) == b"down while frozen"
            await link.until(lambda lk: lk.up.forwarded == 21)
            assert await asyncio.wait_for(loop.sock_recv(accepted, 1), 10) == b""
        writer.close()


async def test_new_connections_go_to_the_current_upstream_and_flow() -> None:
    loop = asyncio.get_running_loop()
    async with listener() as (first, port_a), listener() as (second, port_b), \
            Proxy(port_a) as proxy:
        _, old = await asyncio.open_connection("127.0.0.1", proxy.port)
        on_a, _ = await asyncio.wait_for(loop.sock_accept(first), 10)
        await proxy.wait_links(1)
        proxy.freeze()  # the links of now only
        proxy.upstream = port_b
        _, new = await asyncio.open_connection("127.0.0.1", proxy.port)
        on_b, _ = await asyncio.wait_for(loop.sock_accept(second), 10)
        with on_a, on_b:
            on_a.setblocking(False)
            on_b.setblocking(False)
            links = await proxy.wait_links(2)
            assert [link.frozen for link in links] == [True, False]
            new.write(b"to b")
            assert await read_exactly(on_b, 4) == b"to b"
            old.write(b"to a")
            await links[0].until(lambda lk: len(lk.up.held) == 4)
            assert pending(on_a) is None
        await proxy.close()  # closes frozen links too: the far end sees it now
        old.close()
        new.close()


async def test_cut_client_resets_the_client_and_leaves_the_server_in_silence() -> None:
    loop = asyncio.get_running_loop()
    async with listener() as (server, port), Proxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        accepted, _ = await asyncio.wait_for(loop.sock_accept(server), 10)
        accepted.setblocking(False)
        with accepted:
            (link,) = await proxy.wait_links(1)
            link.cut_client()
            try:  # a reset (or a close): either way the client's connection is gone
                assert await asyncio.wait_for(reader.read(1), 10) == b""
            except ConnectionResetError:
                pass
            await loop.sock_sendall(accepted, b"into the void")
            await link.until(lambda lk: lk.up.ended and len(lk.down.held) == 13)
            assert pending(accepted) is None, "the server got data or a close"
        writer.close()
