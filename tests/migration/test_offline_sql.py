"""The upgrade as a SQL script, for a DBA: ``durable-adapter migrate --store URL --sql`` and
``alembic upgrade head --sql`` print every revision without a database, and the printed
script, applied by ``psql`` or ``sqlite3`` to an empty database, gives tables the store
opens and uses."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from durable_adapter.stores.sql.migrate import head_revisions, migrations_path, upgrade_sql
from durable_adapter.stores.sql.revisions import shipped
from tests._postgres import POSTGRES_URL, drop_schema
from tests.migration._store_checks import (
    RUN,
    assert_round_trips,
    cli,
    one_line_error,
    scratch_database,
)

REPO = Path(__file__).resolve().parents[2]
ALEMBIC = Path(sys.executable).with_name("alembic")


def _every_revision_in(script: str) -> None:
    for revision in shipped(str(migrations_path())).known:
        assert f"-> {revision}" in script, revision
    [head] = head_revisions()
    assert f"'{head}'" in script  # the version row the store checks at open


def _apply(tool: list[str], script: Path) -> None:
    if shutil.which(tool[0]) is None:
        pytest.skip(f"{tool[0]} is not installed")
    done = subprocess.run([*tool], input=script.read_text(), capture_output=True, text=True,
                          timeout=RUN, check=False)
    assert done.returncode == 0 and "ERROR" not in done.stderr, done.stderr


async def test_sqlite_script_applied_by_sqlite3_gives_a_working_store(tmp_path: Path) -> None:
    path = tmp_path / "dba.db"
    done = cli("migrate", "--store", f"sqlite:///{path}", "--sql")
    assert done.returncode == 0, done.stderr
    assert not path.exists()  # nothing was connected to
    _every_revision_in(done.stdout)
    script = tmp_path / "upgrade.sql"
    script.write_text(done.stdout)
    _apply(["sqlite3", str(path)], script)
    await assert_round_trips(f"sqlite+aiosqlite:///{path}")


async def test_postgres_script_applied_by_psql_gives_a_working_store(tmp_path: Path) -> None:
    async with scratch_database() as database:
        # the form users have in DATABASE_URL; no server is contacted for --sql
        done = cli("migrate", "--store", "postgresql://nobody@db.invalid/app", "--sql")
        assert done.returncode == 0, done.stderr
        _every_revision_in(done.stdout)
        assert "durable_adapter_emit_packet" in done.stdout  # 0004, past where it stopped
        script = tmp_path / "upgrade.sql"
        script.write_text(done.stdout)
        _apply(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", database], script)
        await assert_round_trips(f"postgresql+asyncpg:///{database}")


async def test_postgres_script_for_a_schema_puts_every_table_there(tmp_path: Path) -> None:
    schema = f"t_dba_{secrets.token_hex(5)}"
    script = tmp_path / "upgrade.sql"
    script.write_text(upgrade_sql("postgres://db.invalid/app", schema=schema))
    try:
        # psql's default database: the schema is created by the script itself
        _apply(["psql", "-q", "-v", "ON_ERROR_STOP=1"], script)
        await assert_round_trips(POSTGRES_URL, schema=schema)
    finally:
        await drop_schema(schema)


def test_alembic_upgrade_head_sql_from_the_checkout_emits_every_revision() -> None:
    for dialect in ("postgresql", "sqlite"):
        done = subprocess.run([str(ALEMBIC), "-x", f"dialect={dialect}", "upgrade", "head",
                               "--sql"], cwd=REPO, capture_output=True, text=True,
                              timeout=RUN, check=False)
        assert done.returncode == 0, done.stderr
        _every_revision_in(done.stdout)


def test_sql_for_mongodb_is_refused_in_one_line() -> None:
    line = one_line_error(cli("migrate", "--store", "mongodb://localhost/app", "--sql"))
    assert "--sql is for SQL stores" in line
