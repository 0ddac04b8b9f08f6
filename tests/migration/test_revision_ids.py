"""Revision ids are namespaced (``durable_adapter_NNNN``); databases stamped by earlier
releases with ``0001``...``0005`` keep upgrading; a database a later release migrated is
refused in one line, never touched; the URL forms users keep in ``DATABASE_URL`` work.

"Built by the old revisions" here: the schema of a revision, with the old id in our
version table (what those releases left: same tables, only the id differs).
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from durable_adapter.exceptions import ConfigurationError
from durable_adapter.migrate import migrate
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.migrate import alembic_config, head_revisions, migrations_path
from durable_adapter.stores.sql.revisions import LEGACY_IDS, shipped
from durable_adapter.stores.sql.schema import VERSION_TABLE
from tests._postgres import POSTGRES_URL, postgres_schema
from tests.migration._store_checks import RUN, assert_round_trips, cli, one_line_error

NEWER = "durable_adapter_9999"  # what a later release would have stamped


def _versions(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [row[0] for row in db.execute(f"SELECT version_num FROM {VERSION_TABLE}")]


def _stamp(path: Path, revision: str) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(f"UPDATE {VERSION_TABLE} SET version_num = ?", (revision,))


def _columns(path: Path, table: str) -> set[str]:
    with closing(sqlite3.connect(path)) as db:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _upgrade_to(url: str, revision: str, schema: str | None = None) -> None:
    from alembic import command

    config = alembic_config(schema=schema)
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, revision)


async def _old_release_database(tmp_path: Path, old_id: str) -> tuple[Path, str]:
    """A SQLite file as the release that shipped ``old_id`` left it."""
    path = tmp_path / f"at_{old_id}.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(_upgrade_to, url, LEGACY_IDS[old_id])
    _stamp(path, old_id)
    return path, url


def test_ids_are_namespaced_and_the_first_carries_the_branch_label() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    ids = {revision.revision for revision in script.walk_revisions()}
    assert ids == shipped(str(migrations_path())).known
    assert all(revision.startswith("durable_adapter_") for revision in ids)
    assert set(LEGACY_IDS.values()) <= ids
    assert script.get_revision("durable_adapter_0001").branch_labels == {"durable_adapter"}
    assert script.get_revisions("durable_adapter@head")[0].revision == head_revisions()[0]


@pytest.mark.parametrize("old_id", ["0003", "0005"])
async def test_migrate_moves_an_old_release_database_to_the_new_ids(
        tmp_path: Path, old_id: str) -> None:
    path, url = await _old_release_database(tmp_path, old_id)
    done = await asyncio.to_thread(cli, "migrate", "--store", url)
    assert done.returncode == 0, done.stderr
    assert _versions(path) == list(head_revisions())
    assert {"owner", "membership", "resume_seq"} <= _columns(path, "durable_adapter_sessions")
    await assert_round_trips(url)


async def test_a_check_only_open_of_old_ids_asks_for_migrate_without_writing(
        tmp_path: Path) -> None:
    # the last legacy id is behind head since durable_adapter_0006: migrate, said in one line
    path, url = await _old_release_database(tmp_path, "0005")
    with pytest.raises(ConfigurationError, match=r"older than this release.*durable-adapter "
                                                 r"migrate"):
        await SQLStore(url, auto_migrate=False).open()
    assert _versions(path) == ["0005"]  # an old server could still open it


async def test_an_auto_migrating_open_moves_old_ids(tmp_path: Path) -> None:
    path, url = await _old_release_database(tmp_path, "0005")
    async with SQLStore(url, auto_migrate=True):
        pass
    assert _versions(path) == list(head_revisions())


async def test_an_old_id_behind_head_still_needs_migrate(tmp_path: Path) -> None:
    path, url = await _old_release_database(tmp_path, "0003")
    with pytest.raises(ConfigurationError, match=r"older than this release.*durable-adapter "
                                                 r"migrate"):
        await SQLStore(url, auto_migrate=False).open()
    assert _versions(path) == ["0003"]


async def test_postgres_migrate_moves_old_ids_in_a_schema() -> None:
    async with postgres_schema(migrated=False) as schema:
        await asyncio.to_thread(_upgrade_to, POSTGRES_URL, LEGACY_IDS["0005"], schema)
        engine = create_async_engine(POSTGRES_URL)
        try:
            async with engine.begin() as connection:
                await connection.exec_driver_sql(
                    f"UPDATE \"{schema}\".{VERSION_TABLE} SET version_num = '0005'")
            await asyncio.wait_for(migrate(POSTGRES_URL, schema=schema), RUN)
            async with engine.connect() as connection:
                rows = await connection.exec_driver_sql(
                    f'SELECT version_num FROM "{schema}".{VERSION_TABLE}')
                assert [row[0] for row in rows] == list(head_revisions())
        finally:
            await engine.dispose()


async def test_migrate_refuses_a_newer_schema_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    url = f"sqlite+aiosqlite:///{path}"
    await migrate(url)
    _stamp(path, NEWER)
    line = one_line_error(await asyncio.to_thread(cli, "migrate", "--store", url))
    assert f"is at revision {NEWER}, newer than this release ({head_revisions()[0]})" in line
    assert "upgrade durable_adapter or restore" in line
    assert _versions(path) == [NEWER]


@pytest.mark.parametrize("auto_migrate", [False, True])
async def test_opening_a_newer_schema_says_so(tmp_path: Path, auto_migrate: bool) -> None:
    path = tmp_path / "newer.db"
    url = f"sqlite+aiosqlite:///{path}"
    await migrate(url)
    _stamp(path, NEWER)
    with pytest.raises(ConfigurationError) as raised:
        await SQLStore(url, auto_migrate=auto_migrate).open()
    assert "newer than this release" in str(raised.value)
    assert "missing or out of date" not in str(raised.value)
    assert _versions(path) == [NEWER]


async def test_opening_an_unmigrated_database_names_the_fix(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(ConfigurationError, match="missing; run `durable-adapter migrate"):
        await SQLStore(url, auto_migrate=False).open()


async def test_migrate_takes_the_sync_sqlite_form(tmp_path: Path) -> None:
    path = tmp_path / "sync.db"
    done = await asyncio.to_thread(cli, "migrate", "--store", f"sqlite:///{path}")
    assert done.returncode == 0, done.stderr
    assert _versions(path) == list(head_revisions())


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg2"])
async def test_migrate_takes_the_sync_postgres_forms(scheme: str) -> None:
    async with postgres_schema(migrated=False) as schema:
        await asyncio.wait_for(migrate(f"{scheme}://", schema=schema), RUN)
        await assert_round_trips(POSTGRES_URL, schema=schema)


def test_an_unusable_driver_is_one_line() -> None:
    line = one_line_error(cli("migrate", "--store", "mysql+pymysql://u@localhost/app"))
    assert "mysql" in line
