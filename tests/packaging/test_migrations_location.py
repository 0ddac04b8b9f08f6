"""An application's own ``migrations`` package changes nothing we do: our Alembic
environment is found inside ``durable_adapter`` (``durable_adapter.stores.sql.migrations``),
never by the top-level name ``migrations``, Alembic's and Flask-Migrate's default folder.

The built wheel is checked the same way, installed in a fresh virtualenv, by
``.ci/wheel_check.sh``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from durable_adapter.stores.sql.dialect import create_engine, parse_url
from durable_adapter.stores.sql.migrate import MIGRATIONS_PACKAGE, is_current, migrations_path

REPO = Path(__file__).resolve().parents[2]
RUN = 60.0  # seconds one command may take
OPEN_STORE = """
import asyncio, sys
from durable_adapter.stores import store_from_url

async def main() -> None:
    store = store_from_url(sys.argv[1])
    await store.open()
    await store.close()

asyncio.run(main())
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """An application folder whose own ``migrations`` package raises when imported."""
    folder = tmp_path / "app"
    (folder / "migrations").mkdir(parents=True)
    (folder / "migrations" / "__init__.py").write_text(
        'raise RuntimeError("the application\'s migrations package was imported")\n')
    return folder


def run_in(app: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python args...`` from the application's folder, its packages importable."""
    env = {**os.environ, "PYTHONPATH": str(app)}
    env.pop("DURABLE_ADAPTER_STORE_URL", None)
    return subprocess.run([sys.executable, *args], cwd=app, env=env, capture_output=True,
                          text=True, timeout=RUN, check=False)


async def at_head(url: str) -> bool:
    engine = create_engine(parse_url(url))
    try:
        return await is_current(engine)
    finally:
        await engine.dispose()


def test_the_environment_lives_in_our_namespace() -> None:
    assert MIGRATIONS_PACKAGE == "durable_adapter.stores.sql.migrations"
    assert (migrations_path() / "env.py").is_file()
    assert (migrations_path() / "script.py.mako").is_file()


def test_the_trap_is_armed(app: Path) -> None:
    # else the tests below would prove nothing
    done = run_in(app, "-c", "import migrations")
    assert done.returncode != 0 and "application's migrations package" in done.stderr


def test_migrate_command_ignores_the_applications_migrations(app: Path) -> None:
    url = f"sqlite+aiosqlite:///{app / 'cli.db'}"
    done = run_in(app, "-m", "durable_adapter", "migrate", "--store", url)
    assert done.returncode == 0, done.stderr
    assert asyncio.run(at_head(url))


def test_opening_the_sqlite_store_ignores_the_applications_migrations(app: Path) -> None:
    url = f"sqlite+aiosqlite:///{app / 'opened.db'}"
    done = run_in(app, "-c", OPEN_STORE, url)
    assert done.returncode == 0, done.stderr
    assert asyncio.run(at_head(url))


def test_alembic_upgrade_head_from_the_checkout(tmp_path: Path) -> None:
    """``alembic upgrade head`` from a checkout runs the package's environment."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'alembic.db'}"
    alembic = Path(sys.executable).with_name("alembic")
    done = subprocess.run([str(alembic), "-x", f"url={url}", "upgrade", "head"], cwd=REPO,
                          capture_output=True, text=True, timeout=RUN, check=False)
    assert done.returncode == 0, done.stderr
    assert asyncio.run(at_head(url))
