"""The ``durable-adapter`` command line, and the demo app without a browser."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import socketio
from aiohttp import web

from durable_adapter import cli
from durable_adapter.demo.app import create_app

REPO = Path(__file__).resolve().parents[2]
WAIT = 10.0  # seconds any single expected event may take


def run_cli(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m durable_adapter ARGS`` in a child process (it configures logging)."""
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "durable_adapter", *args], cwd=cwd,
                          env=child_env, capture_output=True, text=True, timeout=60)


def test_help_names_every_env_twin() -> None:
    demo = run_cli("demo", "--help")
    assert demo.returncode == 0, demo.stderr
    text = " ".join(demo.stdout.split())
    for env in (cli.ENV_STORE_URL, cli.ENV_HOST, cli.ENV_PORT):
        assert env in text
    assert cli.DEMO_STORE_URL in text
    migrate = run_cli("migrate", "--help")
    assert migrate.returncode == 0 and cli.ENV_STORE_URL in migrate.stdout


def test_env_twins_are_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.ENV_STORE_URL, "memory://")
    monkeypatch.setenv(cli.ENV_HOST, "0.0.0.0")
    monkeypatch.setenv(cli.ENV_PORT, "9123")
    args = cli.build_parser().parse_args(["demo"])
    assert (args.store, args.host, args.port) == ("memory://", "0.0.0.0", 9123)
    args = cli.build_parser().parse_args(["demo", "--port", "0", "--host", "::1"])
    assert (args.host, args.port) == ("::1", 0)
    args = cli.build_parser().parse_args(["migrate"])  # --store required unless in env
    assert args.store == "memory://"


def test_migrate_creates_tables_and_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    first = run_cli("migrate", "--store", url)
    assert first.returncode == 0, first.stderr
    assert "up to date" in first.stdout and "Running upgrade" in first.stderr
    again = run_cli("migrate", env={cli.ENV_STORE_URL: url})
    assert again.returncode == 0, again.stderr
    assert "Running upgrade" not in again.stderr


def test_migrate_errors_exit_1_with_one_message(tmp_path: Path) -> None:
    missing_dir = tmp_path / "no" / "such" / "dir" / "m.db"
    result = run_cli("migrate", "--store", f"sqlite+aiosqlite:///{missing_dir}")
    assert result.returncode == 1
    assert "durable-adapter migrate: error:" in result.stderr
    assert "Traceback" not in result.stderr
    usage = run_cli("migrate", env={cli.ENV_STORE_URL: ""})
    assert usage.returncode == 2 and "--store" in usage.stderr


async def test_demo_app_say_and_chat() -> None:
    app = create_app("memory://")
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    client = socketio.AsyncClient()
    received: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def on_message(msg: dict[str, object], *offset: object) -> None:
        await received.put(msg)

    client.on("message", on_message)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as response:
                assert response.status == 200
                assert 'id="force-close"' in await response.text()
            async with http.get(url + "static/socket.io.min.js") as response:
                assert response.status == 200
                assert (await response.text()).startswith("/*!\n * Socket.IO v4.8")
            await client.connect(url, transports=["websocket"], wait_timeout=WAIT)
            async with http.post(url + "say", data=b"not json") as response:
                assert response.status == 400
            async with http.post(url + "say", json={"text": "  "}) as response:
                assert response.status == 400
            async with http.post(url + "say", json={"text": "hi"}) as response:
                assert response.status == 200
            msg = await asyncio.wait_for(received.get(), WAIT)
            assert (msg["name"], msg["text"]) == ("server", "hi")
            answer = await client.call("message", {"name": "bob", "text": "yo"}, timeout=WAIT)
            assert answer == {"ok": True}
            msg = await asyncio.wait_for(received.get(), WAIT)
            assert (msg["name"], msg["text"]) == ("bob", "yo")
            assert (await client.call("message", "x", timeout=WAIT))["ok"] is False
            info = await client.call("whoami", timeout=WAIT)
            assert info["recovered"] is False and info["failure"] is None
    finally:
        await client.disconnect()
        await runner.cleanup()
