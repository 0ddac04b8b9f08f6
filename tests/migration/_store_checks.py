"""What the migration suites check after building tables some other way: the store opens
on them and round-trips a packet and a session; plus the command line and scratch
PostgreSQL databases they run against."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from durable_adapter.stores.base import NewPacket, Session, TakeRequest
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.postgres import PostgresStore
from tests._postgres import require_server

RUN = 60.0  # seconds one command may take (a subprocess start included)


async def assert_round_trips(url: str, *, schema: str | None = None) -> None:
    """The store at ``url`` opens without migrating and stores and returns what it keeps."""
    kind = SQLStore if url.startswith("sqlite") else PostgresStore
    async with kind(url, schema=schema, auto_migrate=False) as store:
        seq = await store.append(NewPacket(namespace="/", data=["news", {"n": 1}],
                                           rooms=("lobby",)))
        [packet] = await asyncio.wait_for(store.read(after=seq - 1, limit=10), RUN)
        assert (packet.seq, packet.data, packet.rooms) == (seq, ["news", {"n": 1}], ("lobby",))
        now = time.time()
        saved = Session(pid_hash="p" * 64, namespace="/", sid="s1", rooms=("s1", "lobby"),
                        data={"user": "ada"}, epoch=store.epoch, start_seq=0, position=seq,
                        last_sent_seq=seq, disconnected_at=now, expires_at=now + 60)
        await store.save_sessions([saved])
        [taken] = await store.take_sessions([TakeRequest("/", "p" * 64)], node="n1",
                                            now=time.time(), window=60)
    assert isinstance(taken, Session)
    assert (taken.sid, taken.rooms, taken.data, taken.position) == (
        "s1", ("s1", "lobby"), {"user": "ada"}, seq)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``durable-adapter args...`` as a user runs it."""
    env = {**os.environ}
    env.pop("DURABLE_ADAPTER_STORE_URL", None)
    return subprocess.run([sys.executable, "-m", "durable_adapter", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=RUN, check=False)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The error a failed command printed, checked to be one line and no traceback."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr
    return errors[0]


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database's name, dropped after (its own public schema:
    what a fresh deployment or a DBA's script sees)."""
    name = f"da_scratch_{secrets.token_hex(5)}"
    await require_server()
    await _outside_a_transaction(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        await _outside_a_transaction(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _outside_a_transaction(sql: str) -> None:
    connection = await asyncpg.connect(timeout=RUN)
    try:
        await asyncio.wait_for(connection.execute(sql), RUN)
    finally:
        await connection.close()
