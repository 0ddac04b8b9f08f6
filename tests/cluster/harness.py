"""Server nodes as separate processes sharing one store, and clients that hop between them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

import durable_adapter
from tests._harness import WAIT, drop_transport, settle_handlers

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class NodeProcess:
    name: str
    store: str
    process: asyncio.subprocess.Process | None = None
    url: str = ""
    #: more node_app arguments, e.g. ``("--schema", "t_1")``
    args: tuple[str, ...] = ()
    #: environment variables on top of this process's, e.g. the lease expiry
    env: dict[str, str] = field(default_factory=dict)
    #: "uvicorn": Socket.IO only (no control surface), run by uvicorn
    server: str = "aiohttp"

    async def start(self, port: int = 0) -> None:
        if self.server == "uvicorn" and not port:
            port = free_port()  # uvicorn reports no port it chose
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.cluster.node_app", "--store", self.store,
            "--name", self.name, "--port", str(port), "--server", self.server, *self.args,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env})
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert line, f"node {self.name} exited before listening"
        port = json.loads(line)["port"]
        if self.server == "uvicorn":
            await listening(port)  # it reported at its startup, before it listens
        self.url = f"http://127.0.0.1:{port}"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(sig)
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    async def post(self, path: str, body: dict[str, Any], within: float = 120) -> Any:
        async with aiohttp.ClientSession() as http, http.post(
                self.url + path, json=body, timeout=aiohttp.ClientTimeout(total=within)
        ) as response:
            response.raise_for_status()
            return await response.json()

    async def holds(self, sid: str) -> bool:
        """Whether this node still holds the socket ``sid``."""
        return await holds(self.url, sid)

    async def connect_of(self, sid: str) -> dict[str, Any] | None:
        """How the latest connect of ``sid`` on this node went: ``{"recovered": bool,
        "failure": RecoveryFailure name or None}``; None if ``sid`` never connected here."""
        async with aiohttp.ClientSession() as http, http.get(
                f"{self.url}/connects/{sid}",
                timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
            response.raise_for_status()
            found: dict[str, Any] | None = await response.json()
            return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def listening(port: int, within: float = WAIT) -> None:
    """Until 127.0.0.1:``port`` accepts a connection (at most ``within`` seconds)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert asyncio.get_running_loop().time() < deadline, f"nothing listens on {port}"
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def holds(url: str, sid: str) -> bool:
    """Whether the node at ``url`` still holds the socket ``sid`` (a node that does not
    answer holds nothing: it was stopped or killed)."""
    try:
        async with aiohttp.ClientSession() as http, http.get(
                f"{url}/sockets/{sid}", timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
            response.raise_for_status()
            return bool((await response.json())["held"])
    except aiohttp.ClientConnectorError:
        return False


async def released(url: str, sid: str) -> None:
    """Until the node at ``url`` no longer holds ``sid``: its session is stored by then."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while await holds(url, sid):
        assert asyncio.get_running_loop().time() < deadline, f"{url} still holds {sid}"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def cluster(store: str, size: int, args: tuple[str, ...] = (),
                  env: dict[str, str] | None = None) -> AsyncIterator[list[NodeProcess]]:
    nodes = [NodeProcess(f"n{i}", store, args=args, env=env or {}) for i in range(size)]
    try:
        # one at a time: the first may create the schema
        for node in nodes:
            await node.start()
        yield nodes
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


@dataclass
class Listener:
    """A client identity that survives hops: what it received, with each offset."""

    name: str
    auth: dict[str, Any] = field(default_factory=dict)
    received: list[tuple[str, int, str | None]] = field(default_factory=list)
    client: durable_adapter.AsyncClient | None = None
    recoveries: int = 0
    refusals: int = 0
    #: the sid of the latest connection, kept after it ends
    sid: str | None = None

    async def connect(self, url: str, state: dict[str, Any] | None = None) -> None:
        client = durable_adapter.AsyncClient(reconnection=False)
        if state:
            client.load_recovery_state(state)

        @client.on("seq")
        def seq(payload: dict[str, Any]) -> None:
            self.received.append((payload["tag"], payload["i"], client.last_offset()))

        await asyncio.wait_for(client.connect(url, transports=["websocket"], auth=self.auth,
                                              wait_timeout=WAIT), WAIT)
        if state:
            if client.is_recovered():
                self.recoveries += 1
            else:
                self.refusals += 1
        self.client, self.sid = client, client.get_sid()

    async def hop(self, url: str) -> None:
        """Drop the transport abruptly, then come back on ``url`` with pid and offset.

        It comes back once the old node has noticed the drop and stored the session. A
        reconnect *before* that (the half-open case) is ``test_half_open``'s.
        """
        assert self.client is not None
        old, sid = self.client, self.sid
        assert sid is not None
        await drop_transport(old)
        await asyncio.wait_for(old.eio.disconnect(abort=True), WAIT)
        # the events that arrived before the drop move the offset as they are handled
        await settle_handlers(old)
        await released(old.connection_url, sid)
        await self.connect(url, old.recovery_state())

    async def close(self) -> None:
        if self.client is not None:
            await self.client.disconnect()


def offset_seq(offset: str | None) -> int:
    assert offset is not None
    return int(offset.rsplit("-", 1)[1])
