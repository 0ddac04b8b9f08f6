"""Shared by the bench scripts: server and client processes, stores, figures, tables.

Everything talks to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql+asyncpg://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
START_WAIT = 60.0  # seconds a process may take to start listening
STOP_WAIT = 15.0


# -- stores ---------------------------------------------------------------------------


def has_store_module(name: str) -> bool:
    return importlib.util.find_spec(f"durable_adapter.stores.{name}") is not None


async def postgres_reachable() -> bool:
    try:
        import asyncpg

        conn = await asyncio.wait_for(asyncpg.connect(_pg_dsn()), 5)
        await conn.close()
        return True
    except Exception:
        return False


def _pg_dsn() -> str:
    return PG_URL.replace("postgresql+asyncpg://", "postgresql://")


async def redis_reachable() -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", 6379), 2)
        writer.close()
        return True
    except Exception:
        return False


@dataclass
class StoreSpec:
    """One store under test: its URL, and the PostgreSQL schema made for this run."""

    label: str
    url: str
    schema: str | None = None
    cleanup: list[Any] = field(default_factory=list)

    def node_args(self) -> list[str]:
        return ["--store", self.url] + (["--schema", self.schema] if self.schema else [])

    def open_store(self, **kwargs: Any) -> Any:
        """A store object for this spec, in this process (not opened yet)."""
        if self.url.startswith("postgresql"):
            from durable_adapter.stores.sql.postgres import PostgresStore

            return PostgresStore(self.url, schema=self.schema, **kwargs)
        if self.url.startswith("sqlite"):
            from durable_adapter.stores.sql import SQLStore

            return SQLStore(self.url, **kwargs)
        from durable_adapter.stores import store_from_url

        return store_from_url(self.url)


async def make_store(kind: str, tmp: Path, tag: str) -> StoreSpec | str:
    """A fresh store of ``kind`` (memory, sqlite, postgres, redis), or why it is skipped."""
    from durable_adapter.migrate import migrate

    if kind == "memory":
        return StoreSpec("memory", "memory://")
    if kind == "sqlite":
        path = tmp / f"{tag}-{secrets.token_hex(3)}.db"
        url = f"sqlite+aiosqlite:///{path}"
        await migrate(url)
        return StoreSpec("SQLite", url)
    if kind == "postgres":
        if not has_store_module("sql.postgres"):
            return "durable_adapter/stores/sql/postgres.py is not there"
        if not await postgres_reachable():
            return f"PostgreSQL not reachable at {PG_URL}"
        schema = f"bench_{tag}_{secrets.token_hex(3)}"
        await migrate(PG_URL, schema=schema)
        return StoreSpec("PostgreSQL", PG_URL, schema, cleanup=[("pg_schema", schema)])
    if kind == "redis":
        if not has_store_module("redis"):
            return "durable_adapter/stores/redis.py is not there yet"
        if not await redis_reachable():
            return "Redis not reachable on 127.0.0.1:6379"
        prefix = f"bench_{tag}_{secrets.token_hex(3)}"
        return StoreSpec("Redis", f"{REDIS_URL}?prefix={prefix}",
                         cleanup=[("redis_prefix", prefix)])
    raise ValueError(kind)


async def drop_store(spec: StoreSpec) -> None:
    for kind, name in spec.cleanup:
        if kind == "pg_schema":
            import asyncpg

            conn = await asyncpg.connect(_pg_dsn())
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            finally:
                await conn.close()
        elif kind == "redis_prefix":
            import redis.asyncio

            client = redis.asyncio.from_url(REDIS_URL)
            try:
                keys = [key async for key in client.scan_iter(match=f"{name}*", count=1000)]
                for start in range(0, len(keys), 1000):
                    await client.delete(*keys[start:start + 1000])
            finally:
                await client.aclose()


@contextlib.contextmanager
def scratch_dir() -> Any:
    with tempfile.TemporaryDirectory(prefix="durable-bench-") as tmp:
        yield Path(tmp)


# -- processes --------------------------------------------------------------------------


class Node:
    """A server process (bench/_node.py)."""

    def __init__(self, process: asyncio.subprocess.Process, info: dict[str, Any]) -> None:
        self.process = process
        self.port = info["port"]
        self.control = info["control"]
        self.name = info["name"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.control_url = f"http://127.0.0.1:{self.control}"

    async def post(self, path: str, body: dict[str, Any], within: float = 120) -> Any:
        async with aiohttp.ClientSession() as http, http.post(
                self.control_url + path, json=body,
                timeout=aiohttp.ClientTimeout(total=within)) as response:
            response.raise_for_status()
            return await response.json()

    async def get(self, path: str, within: float = 10) -> Any:
        async with aiohttp.ClientSession() as http, http.get(
                self.control_url + path, timeout=aiohttp.ClientTimeout(total=within)) as r:
            r.raise_for_status()
            return await r.json()

    async def cpu(self) -> float:
        return (await self.cpus())[0]

    async def cpus(self) -> tuple[float, float]:
        """CPU seconds so far: the whole process, and its event loop thread."""
        async with aiohttp.ClientSession() as http, http.get(
                self.control_url + "/cpu", timeout=aiohttp.ClientTimeout(total=10)) as r:
            answer = await r.json()
            return float(answer["cpu"]), float(answer.get("loop_thread", "nan"))

    async def stop(self) -> None:
        if self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_WAIT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def start_node(kind: str, spec: StoreSpec | None = None, *, name: str = "node",
                     port: int = 0, reuse_port: bool = False,
                     poll_interval: float | None = None,
                     extra_args: Sequence[str] = (),
                     env: dict[str, str] | None = None) -> Node:
    """``kind``: plain or ours (bench/_node.py), sync-plain or sync-ours (bench/_sync_node.py:
    python-socketio's sync server, or durable_adapter.Server, under Werkzeug), or js
    (bench/js/server.js: socket.io 4.8 with recovery on; needs ``npm ci`` in bench/js).
    ``env``: the process's environment (default: this one's)."""
    if kind.startswith("sync-"):
        args = [sys.executable, str(HERE / "_sync_node.py"), "--kind", kind[5:],
                "--name", name, "--port", str(port), *extra_args]
    elif kind == "js":
        if not (HERE / "js" / "node_modules" / "socket.io").is_dir():
            raise RuntimeError("run `npm ci` in bench/js first")
        args = ["node", str(HERE / "js" / "server.js"), "--name", name]
    else:
        args = [sys.executable, str(HERE / "_node.py"), "--kind", kind, "--name", name,
                "--port", str(port), *extra_args]
    if spec is not None:
        args += spec.node_args()
    if reuse_port:
        args.append("--reuse-port")
    if poll_interval:
        args += ["--poll-interval", str(poll_interval)]
    process = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                   cwd=ROOT, env=env)
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_WAIT)
    except TimeoutError:
        process.kill()
        raise
    if not line:
        await process.wait()
        raise RuntimeError(f"server process {name} exited before listening")
    return Node(process, json.loads(line))


class ClientProc:
    """A client process (bench/_clients.py) holding many clients."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def cmd(self, reply_within: float = 120, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), reply_within)
        if not line:
            raise RuntimeError("client process exited")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"client process: {answer['error']}")
        return answer

    async def stop(self) -> None:
        if self.process.returncode is not None:
            return
        try:
            await self.cmd(reply_within=20, cmd="close")
            await asyncio.wait_for(self.process.wait(), 10)
        except Exception:
            self.process.kill()
            await self.process.wait()


async def start_clients(count: int) -> list[ClientProc]:
    procs = []
    for _ in range(count):
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "_clients.py"), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, cwd=ROOT, limit=2**24)
        procs.append(ClientProc(process))
    return procs


async def on_all(procs: Sequence[ClientProc], reply_within: float = 120,
                 **command: Any) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(p.cmd(reply_within=reply_within, **command)
                                       for p in procs)))


@contextlib.asynccontextmanager
async def running(*stoppables: Any) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await asyncio.gather(*(s.stop() for s in stoppables), return_exceptions=True)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# -- figures ------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(value: float, base: float) -> str:
    if not base or value != value or base != base:
        return "-"
    return f"{value / base:.2f}x"
