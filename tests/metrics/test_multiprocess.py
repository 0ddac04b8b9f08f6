"""Metrics of several worker processes (gunicorn ``-w 4``): with ``PROMETHEUS_MULTIPROC_DIR``
every worker writes prometheus-client's files, and one reader sums them.

Two real worker processes (``worker_app.py``) share a SQLite store and the metrics
directory; clients connect to both, a session dropped on one recovers on the other,
both store emits. prometheus-client's ``MultiProcessCollector`` reads the totals, and
either worker's ``/metrics`` shows the same totals.
"""

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
import pytest

from durable_adapter.migrate import migrate
from tests._harness import WAIT, drop_transport, until

from ._servers import Client, sqlite_url

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import multiprocess  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
START_WAIT = 30.0  # seconds a worker may take to start (the machine is shared)


@contextlib.asynccontextmanager
async def worker(tmp_path: Path, name: str, store: str, metrics_dir: Path
                 ) -> AsyncIterator[str]:
    """``python -m tests.metrics.worker_app STORE`` with the metrics directory; yields its
    URL; SIGTERM after, which must exit 0."""
    log_path = tmp_path / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.metrics.worker_app", store, cwd=tmp_path, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)
    try:
        deadline = asyncio.get_running_loop().time() + START_WAIT
        while not (found := re.search(r"listening on (http://\S+)", log_path.read_text())):
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


class Summed:
    """Every worker's metrics as prometheus-client's multiprocess reader sums them."""

    def __init__(self, metrics_dir: Path) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(self.registry, path=str(metrics_dir))

    def value(self, name: str, **labels: str) -> float:
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else float(found)


async def post(url: str, payload: object) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            url, json=payload, timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
        assert response.status == 200


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(
            url, timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
        assert response.status == 200
        return await response.text()


async def test_two_workers_metrics_are_summed(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    store = sqlite_url(tmp_path)
    await migrate(store)
    summed = Summed(metrics_dir)
    async with worker(tmp_path, "a", store, metrics_dir) as a, \
            worker(tmp_path, "b", store, metrics_dir) as b:
        on_a = await Client().connect(a)
        on_b = [await Client().connect(b), await Client().connect(b)]
        # sockets: a gauge each worker writes, summed over the live workers
        def sockets() -> float:
            return summed.value("durable_adapter_sockets", namespace="/")

        await until(lambda: sockets() == 3, lambda: f"3 sockets summed, got {sockets()}")

        for url, text in ((a, "one"), (b, "two"), (a, "three")):
            await post(url + "/emit", text)
        await on_a.ticks.wait_for(3)
        # the drop comes after the emits: what the recovery replays is not re-counted
        dropped = on_b.pop()
        await dropped.ticks.wait_for(3)
        await drop_transport(dropped.sio)
        await dropped.close()
        back = await Client(dropped.sio.recovery_state()).connect(a)
        assert back.sio.is_recovered()

        assert summed.value("durable_adapter_append_batch_packets_sum") == 3
        assert summed.value("durable_adapter_append_seconds_count") == 3
        assert summed.value("durable_adapter_recoveries_total", namespace="/",
                            outcome="recovered", reason="") == 1
        await until(lambda: sockets() == 3, "3 sockets again after the move from b to a")
        # any worker's /metrics shows the sum, not its own share
        for url in (a, b):
            text = await scrape(url + "/metrics")
            assert "durable_adapter_append_batch_packets_sum 3.0" in text, text
            assert ('durable_adapter_recoveries_total{namespace="/",outcome="recovered",'
                    'reason=""} 1.0') in text
        for peer in (on_a, back, *on_b):
            await peer.sio.disconnect()


async def test_cleanup_gauges_outlive_the_worker_process(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    store = sqlite_url(tmp_path)
    await migrate(store)
    async with worker(tmp_path, "a", store, metrics_dir) as a:
        for text in ("one", "two"):
            await post(a + "/emit", text)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    cleanup = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "durable_adapter", "cleanup", "--store", store, "--once",
        "--retention", "3600", "--max-disconnection-duration", "60", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(cleanup.communicate(), 30)
    assert cleanup.returncode == 0, output.decode()
    summed = Summed(metrics_dir)
    assert summed.value("durable_adapter_retained_packets") == 2
    assert summed.value("durable_adapter_cleanup_last_success_timestamp_seconds") > 1.7e9
