"""deploy/healthcheck.py, the image's HEALTHCHECK: healthy only when a Socket.IO server
answers on the port, and a probe leaves no Engine.IO session behind."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

import durable_adapter
from tests._harness import serving, serving_app, until

PROBE = Path(__file__).resolve().parents[2] / "deploy" / "healthcheck.py"
RUN_WAIT = 30.0  # seconds the probe process may take (its own requests time out at 3 s)


async def probe(port: int) -> tuple[int, str]:
    """Run the healthcheck as the container does; (exit status, its output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(PROBE), env={**os.environ, "DURABLE_ADAPTER_PORT": str(port)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(proc.communicate(), RUN_WAIT)
    assert proc.returncode is not None
    return proc.returncode, output.decode()


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


async def test_a_serving_node_is_healthy_and_keeps_no_probe_session() -> None:
    sio = durable_adapter.AsyncServer(store="memory://", async_mode="aiohttp",
                                      connection_state_recovery={})
    async with serving(sio) as url:
        status, output = await probe(port_of(url))
        assert status == 0, output
        assert sio.eio.sockets, "the probe opened no Engine.IO session"
        # closed at once (python-engineio drops closed sessions from its map later)
        await until(lambda: all(s.closed for s in sio.eio.sockets.values()),
                    "the probe's Engine.IO session to close")


async def test_nothing_listening_is_unhealthy() -> None:
    with socket.socket() as closed:  # a port nothing listens on: bound, never listening
        closed.bind(("127.0.0.1", 0))
        status, output = await probe(closed.getsockname()[1])
    assert status == 1 and "unhealthy" in output


async def test_a_web_server_without_socketio_is_unhealthy() -> None:
    async with serving_app(web.Application()) as url:  # answers 404 everywhere
        status, output = await probe(port_of(url))
    assert status == 1 and "unhealthy" in output
