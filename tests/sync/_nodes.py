"""Sync server nodes (``tests/sync/node_app.py``) as processes sharing one store."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from tests.cluster.harness import ROOT, NodeProcess

START_WAIT = 30.0  # seconds a node may take to import, open its store and listen


@dataclass
class SyncNode(NodeProcess):
    """A node whose server is ``durable_adapter.Server`` (``flask``: behind
    ``durable_adapter.flask.SocketIO``)."""

    flask: bool = False

    async def start(self, port: int = 0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.sync.node_app", "--store", self.store,
            "--port", str(port), *(("--flask",) if self.flask else ()), *self.args,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env})
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), START_WAIT)
        assert line, f"sync node {self.name} exited before listening"
        self.url = f"http://127.0.0.1:{json.loads(line)['port']}"


@asynccontextmanager
async def sync_nodes(store: str, size: int, args: tuple[str, ...] = (), *,
                     flask: bool = False, env: dict[str, str] | None = None
                     ) -> AsyncIterator[list[SyncNode]]:
    """``size`` sync nodes on ``store``, started one after the other, stopped at exit."""
    async with AsyncExitStack() as stack:
        nodes: list[SyncNode] = []
        for i in range(size):
            node = SyncNode(f"s{i}", store, args=args, env=env or {}, flask=flask)
            stack.push_async_callback(node.stop)
            await node.start()
            nodes.append(node)
        yield nodes
