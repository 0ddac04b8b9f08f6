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


#: node_app arguments of a sync node standing in for a cluster node
#: (``tests/cluster/node_app.py``): its pings, for python-engineio clients on a loaded
#: machine (see ``tests.cluster.node_app.server``)
CLUSTER_ARGS = ("--ping-interval", "5", "--ping-timeout", "20")


def cluster_node(name: str, store: str, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, *, server: str = "aiohttp"
                 ) -> NodeProcess:
    """A node for the cluster tests: ``tests/cluster/node_app.py`` on ``server``
    (``aiohttp``, ``uvicorn``), or with ``server="sync"`` a ``durable_adapter.Server``
    behind Werkzeug (its ``/emit``, ``/sockets`` and ``/connects`` are the same)."""
    if server == "sync":
        return SyncNode(name, store, args=(*args, *CLUSTER_ARGS), env=env or {})
    return NodeProcess(name, store, args=args, env=env or {}, server=server)


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
