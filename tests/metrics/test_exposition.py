"""Serving the metrics: aiohttp and ASGI handlers, scrapes that leave the event loop
free under load, and an installation without prometheus-client."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
from aiohttp import web

import durable_adapter
from durable_adapter import metrics
from tests._harness import WAIT, serving

from ._servers import Client, make_server, sqlite_url, wait_for
from .conftest import sample

REPO = Path(__file__).resolve().parents[2]
RENDEZVOUS_WAIT = 5.0  # seconds a scrape waits for the event loop to prove it runs


@asynccontextmanager
async def aiohttp_serving(sio: Any) -> AsyncIterator[str]:
    """``sio`` and ``GET /metrics`` on one aiohttp app on an ephemeral port."""
    app = web.Application()
    app.router.add_get("/metrics", metrics.aiohttp_handler())
    async with serving(sio, app) as url:
        yield url


async def scrape(http: aiohttp.ClientSession, url: str, accept: str = "") -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with http.get(url + "/metrics", headers=headers,
                        timeout=aiohttp.ClientTimeout(total=30)) as response:
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


@dataclass
class Visit:
    """One collect() call waiting for the event loop to act while it is inside."""

    inside: threading.Event = field(default_factory=threading.Event)
    loop_ran: threading.Event = field(default_factory=threading.Event)


class Rendezvous:
    """A collector that only finishes once the event loop has delivered more packets
    during it: were the scrape rendered on the loop, the loop could not, and collect()
    would give up after RENDEZVOUS_WAIT and count a block."""

    def __init__(self) -> None:
        self.visits: collections.deque[Visit] = collections.deque()
        self.released = 0
        self.blocked = 0

    def collect(self) -> list[Any]:
        visit = Visit()
        self.visits.append(visit)
        visit.inside.set()
        if visit.loop_ran.wait(RENDEZVOUS_WAIT):
            self.released += 1
        else:
            self.blocked += 1
        return []


async def test_scrapes_under_load_leave_the_event_loop_free(registry: Any,
                                                            tmp_path: Path) -> None:
    rendezvous = Rendezvous()
    registry.register(rendezvous)
    sio = make_server(sqlite_url(tmp_path))
    async with aiohttp_serving(sio) as url, aiohttp.ClientSession() as http:
        clients = [await Client().connect(url) for _ in range(5)]
        received = lambda: sum(len(c.ticks.items) for c in clients)  # noqa: E731
        stop = asyncio.Event()

        async def load() -> None:
            i = 0
            while not stop.is_set():
                await asyncio.gather(*(sio.emit("tick", i + k) for k in range(10)))
                i += 10

        async def witness() -> None:
            # on the loop: for each scrape inside its collect(), see deliveries go on
            while not stop.is_set():
                if rendezvous.visits:
                    visit = rendezvous.visits.popleft()
                    start = received()
                    await wait_for(lambda n=start: received() > n, "deliveries during a scrape")
                    visit.loop_ran.set()
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(load()), asyncio.create_task(witness())]
        try:
            await wait_for(lambda: received() > 0, "the load to start")
            scrapes = 6
            results = await asyncio.gather(*(scrape(http, url) for _ in range(scrapes)))
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert (rendezvous.released, rendezvous.blocked) == (scrapes, 0)
        registry.unregister(rendezvous)
        for content_type, text in results:
            assert content_type.startswith("text/plain")
            assert 'durable_adapter_sockets{namespace="/"} 5.0' in text
            assert "durable_adapter_append_seconds_bucket" in text
        content_type, text = await scrape(http, url, accept="application/openmetrics-text")
        assert content_type.startswith("application/openmetrics-text")
        assert text.rstrip().endswith("# EOF")
        for client in clients:
            await client.sio.disconnect()


async def test_asgi_app_serves_metrics_beside_socketio(registry: Any, tmp_path: Path) -> None:
    asgi_sio = make_server(sqlite_url(tmp_path), async_mode="asgi")
    app = durable_adapter.ASGIApp(asgi_sio, other_asgi_app=metrics.asgi_app())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, "uvicorn to listen")
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        client = await Client().connect(url, auth={"pid": "B" * 32})
        async with aiohttp.ClientSession() as http:
            _, text = await scrape(http, url)
            async with http.get(url + "/elsewhere") as response:
                assert response.status == 404
        assert ('durable_adapter_recoveries_total{namespace="/",outcome="refused",'
                'reason="unknown_session"} 1.0') in text
        assert 'durable_adapter_sockets{namespace="/"} 1.0' in text
        assert sample(registry, "durable_adapter_sockets", namespace="/") == 1
        await client.sio.disconnect()
    finally:
        await asgi_sio.shutdown()
        server.should_exit = True
        await asyncio.wait_for(serving, WAIT)


NO_EXTRA = r"""
import asyncio, sys
sys.modules["prometheus_client"] = None  # as if durable-adapter[metrics] were not installed
from durable_adapter import cli, metrics
from durable_adapter.exceptions import ConfigurationError
from tests.metrics._servers import Client, make_server
from tests._harness import serving

assert not metrics.available() and not metrics.enabled()
try:
    metrics.aiohttp_handler()
except ConfigurationError as exc:
    print("handler:", exc)

async def main():
    sio = make_server("memory://")
    async with serving(sio) as url:  # every hook runs, as no-ops
        client = await Client().connect(url)
        await sio.emit("tick", 1)
        state = await client.drop(sio)
        await sio.emit("tick", 2)
        back = await Client(state).connect(url)
        await back.ticks.wait_for(1)
        print("recovered:", back.sio.is_recovered())
        await back.sio.disconnect()

asyncio.run(main())
print("cli:", cli.main(["cleanup", "--store", "sqlite+aiosqlite:///x.db", "--once",
                        "--metrics-port", "0"]))
print("loaded:", sorted(n for n, m in sys.modules.items() if "prometheus" in n and m))
"""


def test_without_prometheus_client_nothing_is_counted_and_recovery_works(
        tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", NO_EXTRA], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "handler: metrics need prometheus-client" in lines[0]
    assert "durable-adapter[metrics]" in lines[0]
    assert lines[1:] == ["recovered: True", "cli: 1", "loaded: []"]
    assert "--metrics-port needs prometheus-client" in result.stderr


def test_environment_switch_leaves_metrics_off(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DURABLE_ADAPTER_METRICS": "off"}
    code = ("from durable_adapter import metrics; "
            "print(metrics.available(), metrics.enabled())")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.split()) == (0, ["True", "False"]), result.stderr
