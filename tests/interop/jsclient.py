"""Driving ``js/client.mjs`` (the official socket.io-client) from a test.

The node process prints one JSON line per happening; :class:`JsClient` collects them
and lets a test wait on them, every wait bounded by :data:`WAIT`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from tests._harness import WAIT

JS_DIR = Path(__file__).parent / "js"
CLIENT_SCRIPT = JS_DIR / "client.mjs"

Line = dict[str, Any]


class JsClient:
    """One running ``client.mjs``: its output lines, and a way to send it commands."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[Line] = []
        self.stderr = bytearray()
        self._changed = asyncio.Event()
        self._eof = False
        self._reader = asyncio.create_task(self._read_stdout())
        self._err_reader = asyncio.create_task(self._read_stderr())

    # -- output ----------------------------------------------------------------

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        try:
            while line := await self.process.stdout.readline():
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    self.lines.append({"ev": "garbage", "text": line.decode(errors="replace")})
                self._changed.set()
        finally:
            self._eof = True
            self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self.stderr += chunk

    def describe(self, last: int = 15) -> str:
        tail = "\n".join(json.dumps(line) for line in self.lines[-last:])
        err = self.stderr.decode(errors="replace")[-2000:]
        return f"last {last} lines of the JS client:\n{tail}\nits stderr:\n{err}"

    async def wait_until(self, condition: Callable[[JsClient], Any], what: str) -> Any:
        """Until ``condition(self)`` is truthy (re-checked on each new line), at most
        :data:`WAIT` seconds; returns it."""
        async def _wait() -> Any:
            while True:
                self._changed.clear()
                result = condition(self)
                if result:
                    return result
                if self._eof:
                    raise AssertionError(f"the JS client exited while waiting for {what}")
                await self._changed.wait()

        try:
            return await asyncio.wait_for(_wait(), WAIT)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {WAIT}s waiting for {what}; {self.describe()}") from None

    def find(self, ev: str, start: int = 0, **fields: Any) -> list[Line]:
        """Lines from index ``start`` on with ``"ev": ev`` and these field values."""
        return [line for line in self.lines[start:]
                if line.get("ev") == ev and all(line.get(k) == v for k, v in fields.items())]

    async def wait_line(self, ev: str, start: int = 0, **fields: Any) -> Line:
        """The first line from index ``start`` on that matches (see :meth:`find`)."""
        found: list[Line] = await self.wait_until(
            lambda c: c.find(ev, start, **fields), f"{ev} {fields} after line {start}")
        return found[0]

    def mark(self) -> int:
        """The index the next line will have: a ``start`` for the waits."""
        return len(self.lines)

    def events(self, name: str | None = None, ns: str = "/") -> list[Line]:
        return [line for line in self.find("event", ns=ns)
                if name is None or line["name"] == name]

    async def wait_events(self, count: int, name: str, ns: str = "/") -> list[Line]:
        """Until at least ``count`` events ``name`` arrived in ``ns``; returns them all."""
        return list(await self.wait_until(
            lambda c: len(c.events(name, ns)) >= count and c.events(name, ns),
            f"{count} {name!r} events in {ns}"))

    def connects(self, ns: str = "/") -> list[Line]:
        return self.find("connect", ns=ns)

    async def wait_connects(self, count: int, ns: str = "/") -> Line:
        """Until the ``count``-th connect in ``ns``; returns that one."""
        found: list[Line] = await self.wait_until(
            lambda c: len(c.connects(ns)) >= count and c.connects(ns),
            f"connect #{count} in {ns}")
        return found[count - 1]

    # -- commands --------------------------------------------------------------

    async def send(self, cmd: str, **fields: Any) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
        await asyncio.wait_for(stdin.drain(), WAIT)

    async def close_engine(self) -> None:
        """``socket.io.engine.close()``: the transport goes away, no DISCONNECT packet."""
        await self.send("close_engine")

    async def stop(self) -> None:
        """Ask it to exit, then SIGTERM, then SIGKILL; always reaps the process."""
        process = self.process
        if process.returncode is None:
            with suppress(ConnectionError, TimeoutError, AssertionError):
                await self.send("exit")
            with suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 2)
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 3)
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        for task in (self._reader, self._err_reader):
            try:
                await asyncio.wait_for(task, WAIT)
            except TimeoutError:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        if process.stdin is not None:
            process.stdin.close()
            with suppress(ConnectionError):
                await process.stdin.wait_closed()


def node_executable() -> str | None:
    return shutil.which("node")


@asynccontextmanager
async def js_client(url: str, *, namespaces: tuple[str, ...] = ("/",),
                    transport: str = "websocket", auth: Any = None,
                    **options: Any) -> AsyncIterator[JsClient]:
    """Run ``client.mjs`` against ``url``; it has connected nothing yet when this yields,
    but its sockets are connecting (wait with :meth:`JsClient.wait_connects`).

    ``options`` go into the client's config as they are (``reconnection``,
    ``reconnectionDelay``, ``ackReply``, ``authPerNamespace``...).
    """
    node = node_executable()
    assert node is not None, "node is not installed"
    config = {"url": url, "namespaces": list(namespaces), "transports": [transport],
              **({"auth": auth} if auth is not None else {}), **options}
    process = await asyncio.create_subprocess_exec(
        node, str(CLIENT_SCRIPT), json.dumps(config), cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_NO_WARNINGS": "1"})
    client = JsClient(process)
    try:
        ready = await client.wait_line("ready")
        # the Manager really got it: an ignored reconnection=False lets it reconnect by
        # itself, racing the test's own `connect` into a duplicate CONNECT
        assert ready.get("reconnection") == options.get("reconnection", True), ready
        yield client
    finally:
        await client.stop()
