"""The demo page in headless Chromium: drop the transport, miss a message, recover it.

Chromium is driven over the Chrome DevTools Protocol with aiohttp's websocket client, so
no Selenium/Playwright download is needed. The test skips when Chromium is missing
(``apt-get install -y chromium``), except under ``CI=true`` where it fails.
The screenshot of the recovered page goes to ``artifacts/demo-recovered.png``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import itertools
import json
import os
import re
import signal
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from tests._env import fail_in_ci_else_skip

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
SCREENSHOT = ARTIFACTS / "demo-recovered.png"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
STEP = 20.0  # seconds any single expected step may take
STOP = 10.0  # seconds a process gets to exit before it is killed
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VIEWPORT = (1100, 720)  # CSS pixels of the page, and of the screenshot
#: the page waits this long before reconnecting, so the test can talk meanwhile
RECONNECT_DELAY_MS = 3000

T = TypeVar("T")


def _require_chromium() -> None:
    if not CHROMIUM.exists():
        fail_in_ci_else_skip(f"{CHROMIUM} is missing: install Debian's chromium "
                             "(apt-get install -y chromium) or set $CHROMIUM")


async def wait_until(check: Callable[[], Awaitable[T]], what: str,
                     within: float = STEP, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``within`` s."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what} "
                                 f"(last value {value!r})")
        await asyncio.sleep(interval)


async def stop_process(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> int:
    """Signal ``proc`` (ours, by pid), wait up to STOP s, then kill it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), STOP)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


class DevTools:
    """A minimal Chrome DevTools Protocol client on one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                future = self._pending.pop(data["id"], None) if "id" in data else None
                if future is not None and not future.done():
                    future.set_result(data)
                elif "method" in data:
                    self.events.append(data)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the DevTools connection closed"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, STEP)
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.send("Runtime.evaluate", expression=expression,
                                 returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def page_errors(self) -> list[str]:
        """Uncaught exceptions and console errors seen so far."""
        errors = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                errors.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(json.dumps(params.get("args", []))[:500])
        return errors

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def demo_server(tmp_path: Path, *options: str) -> AsyncIterator[tuple[str, Path]]:
    """``python -m durable_adapter demo`` (with ``options``, e.g. ``--flask``) on a free
    port; yields its URL and log file."""
    log_path = tmp_path / "demo.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    store = f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "durable_adapter", "demo", "--port", "0", "--store", store,
            *options, cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=log, stderr=asyncio.subprocess.STDOUT)
    try:
        async def started() -> str | None:
            if proc.returncode is not None:
                raise AssertionError(f"the demo exited ({proc.returncode}):\n"
                                     + log_path.read_text())
            found = re.search(r"running on (http://\S+/)", log_path.read_text())
            return found.group(1) if found else None

        url = await wait_until(started, "the demo server to listen")
        yield url, log_path
    finally:
        status = await stop_process(proc)
    assert status == 0, f"the demo exited with {status}:\n{log_path.read_text()}"


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path, http: aiohttp.ClientSession) -> AsyncIterator[DevTools]:
    """Headless Chromium; yields a DevTools client attached to its first page."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    log_path = tmp_path / "chromium.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-proxy-server", "--hide-scrollbars",
            f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)
    devtools: DevTools | None = None
    try:
        active_port = profile / "DevToolsActivePort"

        async def listening() -> str | None:
            if proc.returncode is not None:
                raise AssertionError(f"chromium exited ({proc.returncode}):\n"
                                     + log_path.read_text(errors="replace"))
            lines = active_port.read_text().split() if active_port.exists() else []
            return lines[0] if len(lines) >= 2 else None

        port = await wait_until(listening, "chromium's DevToolsActivePort")

        async def page_target() -> str | None:
            try:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                    targets = await response.json()
            except aiohttp.ClientError:
                return None
            pages = [t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"]
            return pages[0] if pages else None

        ws_url = await wait_until(page_target, "a chromium page target")
        ws = await http.ws_connect(ws_url, max_msg_size=0)
        devtools = DevTools(ws)
        await devtools.send("Page.enable")
        await devtools.send("Runtime.enable")
        await devtools.send("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0],
                            height=VIEWPORT[1], deviceScaleFactor=1, mobile=False)
        yield devtools
    finally:
        if devtools is not None:
            await devtools.close()
        await stop_process(proc)


def check_png(data: bytes) -> tuple[int, int]:
    """The width and height of a PNG image; fails on anything else."""
    assert data.startswith(PNG_SIGNATURE), "the screenshot is not a PNG"
    assert data[12:16] == b"IHDR", "the PNG has no IHDR chunk first"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize("options", [
    pytest.param((), id="aiohttp"),
    pytest.param(("--flask",), id="flask-socketio"),
])
async def test_page_recovers_missed_message(tmp_path: Path, options: tuple[str, ...]) -> None:
    _require_chromium()
    async with aiohttp.ClientSession() as http, \
            demo_server(tmp_path, *options) as (url, log_path), \
            chromium(tmp_path, http) as page:

        async def state() -> str:
            return await page.js(
                "document.querySelector('#status')?.dataset.state + '/' + "
                "document.querySelector('#status')?.dataset.caughtUp") or ""

        async def message_texts() -> list[str]:
            return await page.js(
                "[...document.querySelectorAll('#messages li .text')].map(e => e.textContent)")

        # 1. a fresh page gets a new session, then upgrades to websocket
        await page.send("Page.navigate", url=url)
        await wait_until(lambda: _equals(state, "new/true"), "the page to connect")
        await wait_until(
            lambda: page.js("demo.socket.io.engine?.transport?.name === 'websocket'"),
            "the websocket upgrade")

        # 2. send a message through the form; it comes back through the broadcast
        await page.js("document.querySelector('#name').value = 'alice';"
                      "document.querySelector('#text').value = 'hello from the browser';"
                      "document.querySelector('#send').click()")
        await wait_until(lambda: _contains(message_texts, "hello from the browser"),
                         "the page's own message")

        # 3. abrupt close; the reconnection is delayed so the test can act meanwhile
        await page.js(f"demo.socket.io.reconnectionDelay({RECONNECT_DELAY_MS})"
                      f".reconnectionDelayMax({RECONNECT_DELAY_MS}).randomizationFactor(0); null")
        await page.js("document.querySelector('#force-close').click()")
        await wait_until(lambda: _startswith(state, "disconnected/"), "the page to disconnect")

        # 4. the server broadcasts while the page is away
        away = "sent while you were away"
        async with http.post(url + "say", json={"name": "server", "text": away}) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["ok"] is True
        assert (await state()).startswith("disconnected/"), "the page came back too early"
        assert await page.js("demo.connects.length") == 1

        # 5. the page reconnects, recovered, and shows the missed message marked as such
        await wait_until(lambda: _equals(state, "recovered/true"), "the page to recover",
                         within=STEP + RECONNECT_DELAY_MS / 1000)
        connects = await page.js("demo.connects")
        assert [c["recovered"] for c in connects] == [False, True], connects
        assert connects[1]["sid"] == connects[0]["sid"], "a recovered socket keeps its id"
        assert connects[1]["missed"] == 1, connects
        messages = await page.js(
            "[...document.querySelectorAll('#messages li')].map(li => ({"
            "text: li.querySelector('.text').textContent,"
            "who: li.querySelector('.who').textContent,"
            "missed: li.classList.contains('missed')}))")
        assert messages == [
            {"text": "hello from the browser", "who": "alice:", "missed": False},
            {"text": away, "who": "server:", "missed": True},
        ], messages
        assert "recovered" in await page.js("document.querySelector('#status').textContent")
        log_lines = await page.js(
            "[...document.querySelectorAll('#connects li .what')].map(e => e.textContent)")
        assert log_lines[-1].startswith("recovered") and "1 missed message" in log_lines[-1]
        if importlib.util.find_spec("prometheus_client") is not None:
            # the recovery counter from /metrics, beside the connection log
            await wait_until(lambda: page.js(
                "document.querySelector('#recoveries tr.recovered td.count')?.textContent"
                " === '1'"), "the page to show the recovery counter")

        # 6. live messages still flow after the recovery
        async with http.post(url + "say", json={"text": "welcome back"}) as response:
            assert response.status == 200
        await wait_until(lambda: _contains(message_texts, "welcome back"), "a live message")
        assert not await page.js(
            "document.querySelector('#messages li:last-child').classList.contains('missed')")

        # 7. screenshot of the recovered page
        shot = await page.send("Page.captureScreenshot", format="png")
        png = base64.b64decode(shot["data"])
        width, height = check_png(png)
        assert (width, height) == VIEWPORT
        ARTIFACTS.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(png)
        assert check_png(SCREENSHOT.read_bytes()) == (width, height)

        assert page.page_errors() == []
        server_log = log_path.read_text()
        assert "reconnected and recovered" in server_log, server_log


async def _equals(get: Callable[[], Awaitable[Any]], expected: Any) -> bool:
    return bool(await get() == expected)


async def _startswith(get: Callable[[], Awaitable[str]], prefix: str) -> bool:
    return (await get()).startswith(prefix)


async def _contains(get: Callable[[], Awaitable[list[Any]]], item: Any) -> bool:
    return item in await get()
