"""Start-up against a store that cannot be used, as a user runs the app: the process exits
non-zero within seconds with one line naming the fix and no traceback, under aiohttp's
``web.run_app`` (``sio.attach(app)``) and under uvicorn (``durable_adapter.ASGIApp``).
Without the start-up check such a server logs that it runs, then refuses every handshake.

Also ``durable-adapter check`` (exit status 0/1 and one line) on SQLite and PostgreSQL,
and ``durable-adapter demo`` on a port already in use.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from durable_adapter.migrate import migrate
from tests.cluster.harness import free_port, listening

from ._cli import REPO, child_env, run_cli
from .conftest import WAIT

EXIT_WITHIN = 20.0  # seconds from spawn to exit, interpreter start and imports included
STARTUP_FAILED = 3  # exit status: uvicorn's, and gunicorn's "worker failed to boot"
KINDS = ["aiohttp", "uvicorn"]


def app_process(kind: str, store: str, port: int, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ops.startup_app", kind, store, str(port), *flags],
        cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def exit_of(process: subprocess.Popen[str]) -> tuple[int, str]:
    """The process's exit status and stderr, once it exited (bounded)."""
    try:
        _out, err = process.communicate(timeout=EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        process.kill()
        _out, err = process.communicate()
        raise AssertionError(f"still running {EXIT_WITHIN:g} s after start:\n{err}") from None
    return process.returncode, err


def the_line(stderr: str) -> str:
    """The one line of ours in ``stderr``; fails on a traceback or several lines."""
    assert "Traceback" not in stderr, stderr
    ours = [line for line in stderr.splitlines() if "durable_adapter:" in line]
    assert len(ours) == 1, stderr
    return ours[0]


def empty_sqlite_file(path: Path) -> str:
    """A SQLite database holding an unrelated table and none of ours."""
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE app_users (id INTEGER PRIMARY KEY)")
    return f"sqlite+aiosqlite:///{path}"


@pytest.mark.parametrize("kind", KINDS)
def test_unmigrated_sqlite_file_ends_the_process_naming_migrate(
        kind: str, tmp_path: Path) -> None:
    url = empty_sqlite_file(tmp_path / "app.db")
    status, err = exit_of(app_process(kind, url, free_port(), "no-auto-migrate"))
    assert status == STARTUP_FAILED
    line = the_line(err)
    assert f"run `durable-adapter migrate --store {url}`" in line, line


@pytest.mark.parametrize("kind", KINDS)
def test_unreachable_postgres_ends_the_process_saying_so(kind: str) -> None:
    closed = free_port()  # nothing listens there
    url = f"postgres://root@127.0.0.1:{closed}/app"
    status, err = exit_of(app_process(kind, url, free_port()))
    assert status == STARTUP_FAILED
    line = the_line(err)
    assert f"cannot reach the store at postgresql+asyncpg://root@127.0.0.1:{closed}/app" \
        in line, line


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("kind", KINDS)
async def test_unmigrated_postgres_database_ends_the_process_naming_migrate(
        kind: str, database_url: str) -> None:
    status, err = await asyncio.to_thread(exit_of, app_process(kind, database_url,
                                                               free_port()))
    assert status == STARTUP_FAILED
    assert "run `durable-adapter migrate --store" in the_line(err)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_migrated_store_serves_and_answers_ready(kind: str, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    await migrate(url)
    port = free_port()
    process = app_process(kind, url, port, "no-auto-migrate")
    try:
        await listening(port)
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{port}/ready",
                timeout=aiohttp.ClientTimeout(total=WAIT)) as response:
            assert response.status == 200, await response.text()
            assert (await response.text()).strip() == "ready"
    finally:
        process.terminate()
        await asyncio.to_thread(process.communicate, timeout=EXIT_WITHIN)


# -- durable-adapter check ----------------------------------------------------------------


async def test_check_exits_1_on_an_empty_database_and_0_once_migrated(
        database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        database_url = empty_sqlite_file(tmp_path / "cli.db")
    else:  # as a hosted DATABASE_URL holds it: the plain scheme, libpq's sslmode
        database_url = database_url.replace("postgresql+asyncpg://", "postgresql://", 1) \
            + "?sslmode=prefer"
    before = await asyncio.to_thread(run_cli, "check", "--store", database_url)
    assert before.returncode == 1
    assert "Traceback" not in before.stderr
    assert before.stderr.count("\n") == 1, before.stderr
    assert before.stderr.startswith("durable-adapter check: error: the tables at ")
    assert "run `durable-adapter migrate --store" in before.stderr

    await migrate(database_url)
    after = await asyncio.to_thread(run_cli, "check", "--store", database_url)
    assert after.returncode == 0, after.stderr
    assert after.stdout.count("\n") == 1 and after.stdout.rstrip().endswith(": ready")


def test_check_refuses_a_missing_sqlite_file_without_creating_it(tmp_path: Path) -> None:
    path = tmp_path / "nothing.db"
    done = run_cli("check", "--store", f"sqlite:///{path}")
    assert done.returncode == 1 and f"no SQLite database at {path}" in done.stderr
    assert not path.exists()


def test_check_exits_1_on_an_unreachable_database() -> None:
    done = run_cli("check", "--store", f"postgresql://root@127.0.0.1:{free_port()}/app")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "cannot reach the store" in done.stderr


# -- durable-adapter demo -------------------------------------------------------------------


@contextmanager
def taken_port() -> Iterator[int]:
    """A port of 127.0.0.1 on which another socket listens."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_demo_on_a_port_in_use_says_so_in_one_line(workers: str, tmp_path: Path) -> None:
    with taken_port() as port:
        done = run_cli("demo", "--port", str(port), "--workers", workers,
                       "--store", f"sqlite:///{tmp_path / 'demo.db'}")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    # the rest is the demo's INFO log of migrating its SQLite file
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"durable-adapter demo: error: cannot listen on 127.0.0.1:{port}: "
                     "Address already in use (another process may be using the port: "
                     "pick another with --port)"], done.stderr
