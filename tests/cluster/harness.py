"""Server nodes as separate processes sharing one store, and clients that hop between them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

import durable_adapter
from tests._harness import WAIT, drop_transport

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class NodeProcess:
    name: str
    store: str
    process: asyncio.subprocess.Process | None = None
    url: str = ""
    #: more node_app arguments, e.g. ``("--schema", "t_1")``
    args: tuple[str, ...] = ()

    async def start(self, port: int = 0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.cluster.node_app", "--store", self.store,
            "--name", self.name, "--port", str(port), *self.args,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert line, f"node {self.name} exited before listening"
        self.url = f"http://127.0.0.1:{json.loads(line)['port']}"

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


@asynccontextmanager
async def cluster(store: str, size: int, args: tuple[str, ...] = ()
                  ) -> AsyncIterator[list[NodeProcess]]:
    nodes = [NodeProcess(f"n{i}", store, args=args) for i in range(size)]
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
        self.client = client

    async def hop(self, url: str, pause: float = 0.2) -> None:
        """Drop the transport abruptly, then come back on ``url`` with pid and offset."""
        assert self.client is not None
        old = self.client
        await drop_transport(old)
        try:
            await asyncio.wait_for(old.eio.disconnect(abort=True), WAIT)
        except Exception:  # already gone
            pass
        await asyncio.sleep(pause)  # a real client waits >= 1 s before reconnecting
        # read after the pause: events that arrived before the drop are still being
        # dispatched (one task each), and each advances the offset
        await self.connect(url, old.recovery_state())

    async def close(self) -> None:
        if self.client is not None:
            await self.client.disconnect()


def offset_seq(offset: str | None) -> int:
    assert offset is not None
    return int(offset.rsplit("-", 1)[1])
