"""``durable-adapter cleanup`` and ``durable-adapter migrate`` as processes, on SQLite and
PostgreSQL (a fresh database per test: the command line takes a URL, not a schema)."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from durable_adapter import cli
from durable_adapter.stores.base import Session
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.postgres import PostgresStore

from .conftest import WAIT

REPO = Path(__file__).resolve().parents[2]
RUN_WAIT = 60.0  # seconds for one command, interpreter start included


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "durable_adapter", *args], env=_env(env),
                          capture_output=True, text=True, timeout=RUN_WAIT, check=False)


class Running:
    """A ``durable-adapter`` child process whose stderr lines are read by a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "durable_adapter", *args], env=_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, text: str) -> None:
        """Until a stderr line contains ``text`` (bounded by RUN_WAIT)."""
        deadline = time.monotonic() + RUN_WAIT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return
        raise AssertionError(f"{text!r} not logged; got:\n{''.join(self.seen)}")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum``; the exit status (bounded by WAIT)."""
        self.process.send_signal(signum)
        status = self.process.wait(timeout=WAIT)
        self._reader.join(WAIT)
        while (line := self.lines.get_nowait() if not self.lines.empty() else None):
            self.seen.append(line)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=WAIT)
        self._reader.join(WAIT)
        if self.process.stderr is not None:
            self.process.stderr.close()


@contextmanager
def running_cli(*args: str) -> Iterator[Running]:
    child = Running(*args)
    try:
        yield child
    finally:
        child.kill()


def test_help_names_the_env_twins() -> None:
    done = run_cli("cleanup", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split()).replace("- ", "-")
    for env in (cli.ENV_STORE_URL, cli.ENV_CLEANUP_INTERVAL, cli.ENV_CLEANUP_ONCE,
                cli.ENV_RETENTION, cli.ENV_MAX_DISCONNECTION_DURATION, cli.ENV_BATCH_SIZE):
        assert env in text
    for flag in ("--store", "--interval", "--once", "--retention",
                 "--max-disconnection-duration", "--batch-size"):
        assert flag in text


def test_env_twins_are_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.ENV_STORE_URL, "sqlite+aiosqlite:///x.db")
    monkeypatch.setenv(cli.ENV_CLEANUP_INTERVAL, "5")
    monkeypatch.setenv(cli.ENV_CLEANUP_ONCE, "true")
    monkeypatch.setenv(cli.ENV_RETENTION, "600")
    monkeypatch.setenv(cli.ENV_MAX_DISCONNECTION_DURATION, "300")
    monkeypatch.setenv(cli.ENV_BATCH_SIZE, "50")
    args = cli.build_parser().parse_args(["cleanup"])
    assert (args.store, args.interval, args.once, args.retention,
            args.max_disconnection_duration, args.batch_size) == (
        "sqlite+aiosqlite:///x.db", 5.0, True, 600.0, 300.0, 50)
    args = cli.build_parser().parse_args(["cleanup", "--batch-size", "7"])
    assert args.batch_size == 7


def test_migrate_twice(database_url: str) -> None:
    first = run_cli("migrate", "--store", database_url)
    assert first.returncode == 0, first.stderr
    assert "Running upgrade" in first.stderr
    again = run_cli("migrate", "--store", database_url)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout and "Running upgrade" not in again.stderr


def test_migrate_twice_at_once(database_url: str) -> None:
    command = [sys.executable, "-m", "durable_adapter", "migrate", "--store", database_url]
    runs = [subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=RUN_WAIT) for run in runs]
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr
        assert "up to date" in stdout
    # exactly one of them applied the migrations; the other found the tables at head
    assert sum("Running upgrade" in stderr for _, stderr in outputs) == 1
    assert run_cli("cleanup", "--store", database_url, "--once").returncode == 0


async def _expired_sessions(url: str, count: int) -> None:
    now = time.time()
    kind = SQLStore if url.startswith("sqlite") else PostgresStore
    async with kind(url, auto_migrate=False) as store:
        await store.save_sessions([Session(
            pid_hash=f"h{i}", namespace="/", sid=f"s{i}", rooms=(), data={}, epoch="e",
            start_seq=0, position=0, last_sent_seq=None, disconnected_at=now - 10,
            expires_at=now - 1) for i in range(count)])


def test_once_purges_and_exits_0(database_url: str) -> None:
    assert run_cli("migrate", "--store", database_url).returncode == 0
    asyncio.run(_expired_sessions(database_url, 5))
    done = run_cli("cleanup", "--store", database_url, "--once", "--batch-size", "2")
    assert done.returncode == 0, done.stderr
    assert "removed 5 expired session(s) and 0 packet(s)" in done.stderr
    again = run_cli("cleanup", "--once", env={cli.ENV_STORE_URL: database_url})
    assert again.returncode == 0 and "removed 0 expired session(s)" in again.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_worker_with_status_0(database_url: str, signum: int) -> None:
    assert run_cli("migrate", "--store", database_url).returncode == 0
    with running_cli("cleanup", "--store", database_url, "--interval", "0.1") as worker:
        worker.wait_line("removed 0 expired")
        started = time.monotonic()
        assert worker.stop(signum) == 0
        assert time.monotonic() - started < 5.0
        rest = "".join(worker.seen)
        assert "stopped after" in rest and "Traceback" not in rest


def test_second_worker_waits_as_standby_and_takes_over(database_url: str) -> None:
    assert run_cli("migrate", "--store", database_url).returncode == 0
    args = ("cleanup", "--store", database_url, "--interval", "0.2")
    with running_cli(*args) as first:
        first.wait_line("cleanup worker active")
        with running_cli(*args) as second:
            second.wait_line("standby")
            assert first.stop() == 0
            second.wait_line("cleanup worker active")
            second.wait_line("removed 0 expired")
            assert second.stop() == 0


@pytest.mark.parametrize("url, message", [
    ("not-a-url", "must be a store URL"),
    ("postgresql+asyncpg://nobody@127.0.0.1:1/none", "cannot reach the store"),
    ("sqlite+aiosqlite:////no/such/dir/x.db", "no SQLite database at /no/such/dir/x.db"),
    ("memory://", "memory:// lives inside one server process"),
])
def test_bad_url_or_unreachable_database_exits_1(url: str, message: str) -> None:
    done = run_cli("cleanup", "--store", url, "--once")
    assert done.returncode == 1
    assert "durable-adapter cleanup: error:" in done.stderr and message in done.stderr
    assert "Traceback" not in done.stderr


def test_short_retention_exits_1_with_the_reason(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    done = run_cli("cleanup", "--store", url, "--retention", "30",
                   "--max-disconnection-duration", "60")
    assert done.returncode == 1 and "shorter than max_disconnection_duration" in done.stderr


def test_tables_missing_exits_1_pointing_at_migrate(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        Path(database_url.split("///", 1)[1]).touch()  # an empty file: no tables
    done = run_cli("cleanup", "--store", database_url, "--once")
    assert done.returncode == 1 and "durable-adapter migrate" in done.stderr
