"""The Alembic migrations build exactly the tables the store's MetaData describes.

``alembic upgrade head`` runs as a user would run it from a checkout (a subprocess with
the repo's alembic.ini); :func:`durable_adapter.migrate.migrate` runs the copy that ships
inside the package, also twice and concurrently.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect
from sqlalchemy.ext.asyncio import create_async_engine

from durable_adapter._codec import encode_value
from durable_adapter.exceptions import ConfigurationError
from durable_adapter.migrate import migrate
from durable_adapter.stores.base import Session, TakeRequest
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.migrate import head_revisions
from durable_adapter.stores.sql.schema import VERSION_TABLE, metadata
from tests._postgres import POSTGRES_URL, postgres_schema

REPO = Path(__file__).resolve().parents[2]
ALEMBIC = Path(sys.executable).with_name("alembic")
WAIT = 60.0  # seconds for one migration run, subprocess start included


def _diff(path: Path) -> list[Any]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _version(path: Path) -> list[str]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}")
            return [row[0] for row in rows]
    finally:
        engine.dispose()


def _alembic(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ALEMBIC), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def test_alembic_upgrade_head_matches_the_metadata(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    done = _alembic("-x", f"url=sqlite+aiosqlite:///{path}", "upgrade", "head")
    assert done.returncode == 0, done.stderr
    assert _diff(path) == []
    assert _version(path) == list(head_revisions())


def test_alembic_takes_the_url_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.db"
    done = _alembic("upgrade", "head", env={"DURABLE_ADAPTER_URL": f"sqlite+aiosqlite:///{path}"})
    assert done.returncode == 0, done.stderr
    assert _diff(path) == []


def test_alembic_downgrade_removes_every_table(tmp_path: Path) -> None:
    url = f"url=sqlite+aiosqlite:///{tmp_path / 'down.db'}"
    assert _alembic("-x", url, "upgrade", "head").returncode == 0
    done = _alembic("-x", url, "downgrade", "base")
    assert done.returncode == 0, done.stderr
    engine = create_engine(f"sqlite:///{tmp_path / 'down.db'}")
    try:
        assert set(inspect(engine).get_table_names()) == {VERSION_TABLE}
    finally:
        engine.dispose()


async def test_sessions_saved_before_0003_survive_it_without_a_membership_log(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    assert _alembic("-x", f"url={url}", "upgrade", "durable_adapter_0002").returncode == 0
    expires = time.time() + 60
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "INSERT INTO durable_adapter_sessions (namespace, pid_hash, sid, rooms, data, "
            "epoch, start_seq, position, last_sent_seq, disconnected_at, expires_at) "
            "VALUES ('/', ?, 'sid1', '[\"sid1\", \"lobby\"]', ?, 'e', 2, 5, NULL, 0, ?)",
            ("a" * 64, encode_value({"user": "ada"}), expires))
    await asyncio.wait_for(migrate(url), WAIT)
    async with SQLStore(url, auto_migrate=False) as store:
        (session,) = await store.take_sessions([TakeRequest("/", "a" * 64)], node="n1",
                                               now=time.time(), window=60)
    assert isinstance(session, Session) and session.membership is None
    assert (session.rooms, session.data, session.start_seq) == (("sid1", "lobby"),
                                                                {"user": "ada"}, 2)


async def test_sessions_saved_before_0005_are_disconnected_ones_and_survive_a_downgrade(
        tmp_path: Path) -> None:
    path = tmp_path / "before_leases.db"
    url = f"sqlite+aiosqlite:///{path}"
    assert _alembic("-x", f"url={url}", "upgrade", "durable_adapter_0004").returncode == 0
    expires = time.time() + 60
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "INSERT INTO durable_adapter_sessions (namespace, pid_hash, sid, rooms, data, "
            "epoch, start_seq, position, last_sent_seq, disconnected_at, expires_at) "
            "VALUES ('/', ?, 'sid1', '[\"sid1\"]', ?, 'e', 2, 5, NULL, 0, ?)",
            ("a" * 64, encode_value({"user": "ada"}), expires))
    await asyncio.wait_for(migrate(url), WAIT)
    async with SQLStore(url, auto_migrate=False) as store:
        await store.renew_lease("n1", now=time.time(), expiry=10)
        (taken,) = await store.take_sessions([TakeRequest("/", "a" * 64)], node="n1",
                                             now=time.time(), window=60)
    assert isinstance(taken, Session) and taken.owner == "n1" and taken.position == 5
    done = _alembic("-x", f"url={url}", "downgrade", "durable_adapter_0004")
    assert done.returncode == 0, done.stderr
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM durable_adapter_sessions").fetchone() == (1,)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "durable_adapter_nodes" not in tables


async def test_migrate_twice_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "twice.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.wait_for(migrate(url), WAIT)
    async with SQLStore(url, auto_migrate=False) as store:
        epoch = store.epoch
    await asyncio.wait_for(migrate(url), WAIT)
    assert _diff(path) == []
    assert _version(path) == list(head_revisions())
    async with SQLStore(url, auto_migrate=False) as store:
        assert store.epoch == epoch  # the second run touched nothing


async def test_two_migrations_at_once_both_succeed(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.wait_for(asyncio.gather(migrate(url), migrate(url), migrate(url)), WAIT)
    assert _diff(path) == []
    assert _version(path) == list(head_revisions())


def test_two_processes_migrating_at_once_both_succeed(tmp_path: Path) -> None:
    path = tmp_path / "processes.db"
    code = ("import asyncio, sys; from durable_adapter.migrate import migrate; "
            "asyncio.run(migrate(sys.argv[1]))")
    url = f"sqlite+aiosqlite:///{path}"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url], cwd=REPO, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=WAIT)
        assert run.returncode == 0, stderr
    assert _diff(path) == []
    assert _version(path) == list(head_revisions())


async def test_sqlite_refuses_a_schema(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="schema"):
        await migrate(f"sqlite+aiosqlite:///{tmp_path / 's.db'}", schema="tenant")


def _pg_diff(connection: Connection, schema: str) -> list[Any]:
    # tables carry no schema in the MetaData: compare against the search path's first
    connection.exec_driver_sql(f'SET search_path TO "{schema}"')
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "version_table": VERSION_TABLE}
    )
    return list(compare_metadata(context, metadata))


async def test_postgres_migrations_match_the_metadata_in_a_schema() -> None:
    async with postgres_schema(migrated=False) as schema:
        await asyncio.wait_for(migrate(POSTGRES_URL, schema=schema), WAIT)
        await asyncio.wait_for(migrate(POSTGRES_URL, schema=schema), WAIT)  # a no-op
        engine = create_async_engine(POSTGRES_URL)
        try:
            async with engine.connect() as connection:
                assert await connection.run_sync(_pg_diff, schema) == []
                versions = await connection.exec_driver_sql(
                    f'SELECT version_num FROM "{schema}".{VERSION_TABLE}')
                assert [row[0] for row in versions] == list(head_revisions())
        finally:
            await engine.dispose()


# packets stored before 0006, as (namespace, rooms JSON): what the backfill indexes
_BEFORE_TARGETS = [("/", "[]"), ("/", '["a", "b"]'), ("/chat", '["a"]'), ("/", '["a"]')]


async def _found_by_target(store: SQLStore) -> list[list[int]]:
    from durable_adapter.stores.targets import NAMESPACE, TargetRange, room_target

    ranges = [TargetRange("/", NAMESPACE, 0, 10, 10), TargetRange("/", room_target("a"), 0, 10, 10),
              TargetRange("/", room_target("b"), 0, 10, 10),
              TargetRange("/chat", room_target("a"), 0, 10, 10)]
    return [[p.seq for p in answer] for answer in await store.read_targets(ranges)]


async def test_packets_stored_before_0007_are_found_by_their_targets(tmp_path: Path) -> None:
    path = tmp_path / "before_targets.db"
    url = f"sqlite+aiosqlite:///{path}"
    assert _alembic("-x", f"url={url}", "upgrade", "durable_adapter_0006").returncode == 0
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("INSERT INTO durable_adapter_meta VALUES (1, 'e')")
        db.execute("INSERT INTO durable_adapter_counter VALUES (1, 4, 0)")
        db.executemany(
            "INSERT INTO durable_adapter_packets VALUES (?, ?, ?, ?, '[]', ?)",
            [(seq, ns, encode_value(["e", seq]), rooms, time.time())
             for seq, (ns, rooms) in enumerate(_BEFORE_TARGETS, 1)])
    await asyncio.wait_for(migrate(url), WAIT)
    async with SQLStore(url, auto_migrate=False) as store:
        assert await _found_by_target(store) == [[1], [2, 4], [2], [3]]
    done = _alembic("-x", f"url={url}", "downgrade", "durable_adapter_0006")
    assert done.returncode == 0, done.stderr


async def test_postgres_backfills_the_target_index_and_its_emit_function_writes_it() -> None:
    from durable_adapter.stores.sql.postgres import PostgresStore

    async with postgres_schema(migrated=False) as schema:
        url = POSTGRES_URL
        done = _alembic("-x", f"url={url}", "-x", f"schema={schema}", "upgrade",
                        "durable_adapter_0006")
        assert done.returncode == 0, done.stderr
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.exec_driver_sql(
                    f'INSERT INTO "{schema}".durable_adapter_meta VALUES (1, \'e\')')
                await connection.exec_driver_sql(
                    f'INSERT INTO "{schema}".durable_adapter_counter VALUES (1, 4, 0)')
                for seq, (ns, rooms) in enumerate(_BEFORE_TARGETS, 1):
                    await connection.exec_driver_sql(
                        f'INSERT INTO "{schema}".durable_adapter_packets VALUES '
                        "($1, $2, $3, $4, '[]', $5)",
                        (seq, ns, encode_value(["e", seq]), rooms, time.time()))
            await asyncio.wait_for(migrate(url, schema=schema), WAIT)
            async with engine.begin() as connection:  # the function of 0007: rows too
                await connection.exec_driver_sql(
                    f"SELECT \"{schema}\".durable_adapter_emit('/', 'e', '[]', ARRAY['b'])")
            async with PostgresStore(url, schema=schema) as store:
                assert await _found_by_target(store) == [[1], [2, 4], [2, 5], [3]]
            done = _alembic("-x", f"url={url}", "-x", f"schema={schema}", "downgrade",
                            "durable_adapter_0006")
            assert done.returncode == 0, done.stderr
        finally:
            await engine.dispose()
