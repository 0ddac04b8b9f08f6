"""The metrics of real processes: ``durable-adapter demo`` and ``durable-adapter cleanup
--metrics-port``, scraped over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from durable_adapter.migrate import migrate
from durable_adapter.stores.base import NewPacket
from durable_adapter.stores.sql import SQLStore
from tests._harness import WAIT, drop_transport

from ._servers import Client, sqlite_url

REPO = Path(__file__).resolve().parents[2]
START_WAIT = 30.0  # seconds a process may take to start (the machine is shared)


@contextlib.asynccontextmanager
async def command(tmp_path: Path, *args: str, ready: str) -> AsyncIterator[str]:
    """``python -m durable_adapter ARGS``; yields the first match of ``ready`` (a regex
    with one group) in its output; SIGTERM after, which must exit 0."""
    log_path = tmp_path / f"{args[0]}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "durable_adapter", *args, cwd=tmp_path, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)
    try:
        deadline = asyncio.get_running_loop().time() + START_WAIT
        while not (found := re.search(ready, log_path.read_text())):
            assert proc.returncode is None, f"exited {proc.returncode}:\n{log_path.read_text()}"
            assert asyncio.get_running_loop().time() < deadline, log_path.read_text()
            await asyncio.sleep(0.05)
        yield found.group(1)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            status = await asyncio.wait_for(proc.wait(), WAIT)
        except TimeoutError:
            proc.kill()
            status = await proc.wait()
    assert status == 0, log_path.read_text()


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(
            url, timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
        assert response.status == 200
        return await response.text()


async def test_demo_scrape_shows_a_recovery_and_a_refusal(tmp_path: Path) -> None:
    async with command(tmp_path, "demo", "--port", "0", "--store", sqlite_url(tmp_path),
                       ready=r"running on (http://\S+)/") as url:
        client = await Client().connect(url)
        await drop_transport(client.sio)
        await client.close()
        back = await Client(client.sio.recovery_state()).connect(url)
        assert back.sio.is_recovered()
        forged = await Client().connect(url, auth={"pid": "C" * 32})
        assert not forged.sio.is_recovered()
        text = await scrape(url + "/metrics")
        assert ('durable_adapter_recoveries_total{namespace="/",outcome="recovered",'
                'reason=""} 1.0') in text
        assert ('durable_adapter_recoveries_total{namespace="/",outcome="refused",'
                'reason="unknown_session"} 1.0') in text
        assert 'durable_adapter_sockets{namespace="/"} 2.0' in text
        for peer in (back, forged):
            await peer.sio.disconnect()


async def test_cleanup_worker_serves_its_metrics(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await migrate(url)
    store = SQLStore(url, auto_migrate=False)
    await store.open()
    try:
        for i in range(3):
            await store.append(NewPacket(namespace="/", data=["tick", i]))
    finally:
        await store.close()
    async with command(tmp_path, "cleanup", "--store", url, "--interval", "0.1",
                       "--retention", "3600", "--max-disconnection-duration", "60",
                       "--metrics-port", "0", "--metrics-host", "127.0.0.1",
                       ready=r"metrics on (http://\S+)") as metrics_url:
        assert metrics_url.startswith("http://127.0.0.1:")

        async def scraped_after_a_pass() -> str:
            while True:
                text = await scrape(metrics_url)
                if re.search(r"^durable_adapter_cleanup_last_success_timestamp_seconds "
                             r"1\.\d+e\+09$", text, re.M):
                    return text
                await asyncio.sleep(0.05)

        text = await asyncio.wait_for(scraped_after_a_pass(), WAIT)
        assert "durable_adapter_retained_packets 3.0" in text
        assert 'durable_adapter_cleanup_removed_total{kind="packets"} 0.0' in text
