"""``import durable_adapter`` brings only what the app uses: a Redis or memory app never
loads SQLAlchemy, Alembic, pymongo or (until a metric is counted) prometheus-client.

Each check runs in a fresh interpreter: this test process has imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import _redis

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("sqlalchemy", "alembic", "prometheus_client", "pymongo")
RUN_WAIT = 60.0  # seconds for a fresh interpreter to import and run (the machine is shared)

REPORT = (
    "import json, sys\n"
    f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
)

# a Redis-only app: a server on a redis:// store, a client connects, gets a stored event
REDIS_APP = """
import asyncio, sys
import durable_adapter
from durable_adapter.stores import store_from_url
from tests._harness import Inbox, serving

async def main(url: str) -> None:
    store = store_from_url(url)
    await store.open()
    await store.close()
    sio = durable_adapter.AsyncServer(store=url, async_mode="aiohttp",
                                      connection_state_recovery={})
    async with serving(sio) as served:
        client = durable_adapter.AsyncClient(reconnection=False)
        inbox = Inbox()
        client.on("tick", inbox.put)
        await asyncio.wait_for(client.connect(served, transports=["websocket"]), 10)
        await sio.emit("tick", 1)
        await inbox.wait_for(1)
        await client.disconnect()

asyncio.run(main(sys.argv[1]))
"""


def loaded_after(code: str, *args: str, **env: str) -> list[str]:
    """Which of HEAVY a fresh interpreter has loaded after running ``code``."""
    result = subprocess.run(
        [sys.executable, "-c", code + "\n" + REPORT, *args], cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True, text=True, timeout=RUN_WAIT)
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_the_heavy_modules_are_installed_here() -> None:
    # otherwise the checks below would pass for a reason that is not the package's
    for name in HEAVY:
        __import__(name)


def test_importing_the_server_loads_no_store_driver_nor_metrics() -> None:
    assert loaded_after("import durable_adapter\nfrom durable_adapter import AsyncServer, "
                        "AsyncClient, Emitter, store_from_url") == []


@pytest.mark.parametrize("name", ["__version__", "RecoveryFailure", "StoreError"])
def test_light_names_load_nothing_heavy(name: str) -> None:
    assert loaded_after(f"import durable_adapter\ndurable_adapter.{name}") == []


def test_a_redis_app_never_loads_sqlalchemy() -> None:
    with _redis.redis_prefix() as prefix:
        loaded = loaded_after(REDIS_APP, _redis.store_url(prefix))
    # prometheus-client is installed here, so the server counts metrics: it is the only one
    assert loaded == ["prometheus_client"]


def test_a_redis_app_without_metrics_loads_nothing_heavy() -> None:
    with _redis.redis_prefix() as prefix:
        assert loaded_after(REDIS_APP, _redis.store_url(prefix),
                            DURABLE_ADAPTER_METRICS="off") == []


def test_every_public_name_resolves() -> None:
    # a name listed in __all__ but in neither the eager imports nor the lazy table would
    # only fail when a user first touches it
    code = ("import durable_adapter\n"
            "missing = [n for n in durable_adapter.__all__ if not hasattr(durable_adapter, n)]\n"
            "assert not missing, missing\n"
            "assert set(dir(durable_adapter)) >= set(durable_adapter.__all__)")
    loaded_after(code)


def test_metrics_reachable_as_an_attribute_after_a_plain_import() -> None:
    # as the metrics docs write it: durable_adapter.metrics.aiohttp_handler() with nothing
    # but `import durable_adapter` before
    loaded = loaded_after("import durable_adapter\n"
                          "assert durable_adapter.metrics.enabled()\n"
                          "durable_adapter.metrics.aiohttp_handler()")
    assert loaded == ["prometheus_client"]
