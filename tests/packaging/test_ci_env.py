"""``CI`` is read one way everywhere (tests/_env.py): under any usual truthy value a
missing PostgreSQL or Redis fails its tests, and MongoDB tests skipped for want of a
replica set are counted in one summary line saying how to run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._env import in_ci

REPO = Path(__file__).resolve().parents[2]
RUN = 120.0  # seconds one pytest run may take
POSTGRES_TEST = ("tests/migration/test_migrations.py::"
                 "test_postgres_migrations_match_the_metadata_in_a_schema")
REDIS_TEST = "tests/conformance/test_redis_history.py"


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", "yes", "Yes", "on", " true "])
def test_truthy_values_mean_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci()


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off"])
def test_other_values_do_not(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert not in_ci()


def pytest_run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A pytest run of the repository's own tests, with no server to be found in Docker."""
    environ = {k: v for k, v in os.environ.items() if k != "DURABLE_ADAPTER_MONGO_URL"}
    environ.update(DOCKER_HOST="unix:///nonexistent/docker.sock", **env)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=RUN, check=False)


def test_ci_1_fails_postgres_tests_without_a_server() -> None:
    done = pytest_run(POSTGRES_TEST, CI="1", PGHOST="127.0.0.1", PGPORT="1")
    assert "PostgreSQL is required under CI" in done.stdout, done.stdout
    assert done.returncode == 1


def test_ci_1_fails_redis_tests_without_a_server() -> None:
    done = pytest_run(REDIS_TEST, "-x", CI="1",
                      DURABLE_ADAPTER_TEST_REDIS="redis://127.0.0.1:1/0")
    assert "Redis is required under CI" in done.stdout, done.stdout
    assert done.returncode == 1


def test_skipped_mongodb_tests_are_counted_in_one_line() -> None:
    done = pytest_run("tests/stores/test_mongo_store.py", CI="true")
    assert done.returncode == 0, done.stdout
    lines = [line for line in done.stdout.splitlines() if "MongoDB tests skipped" in line]
    assert len(lines) == 1, done.stdout
    count = int(lines[0].split()[0])
    assert count > 0 and f"{count} skipped" in done.stdout
    assert "DURABLE_ADAPTER_MONGO_URL" in lines[0] and "docker" in lines[0]
