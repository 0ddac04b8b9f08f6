"""Fixtures of the interop tests: ``socket.io-client`` installed, servers on each store."""

from __future__ import annotations

import fcntl
import importlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests._env import fail_in_ci_else_skip
from tests.interop.jsclient import JS_DIR, node_executable

LOCKFILE = JS_DIR / "package-lock.json"
#: written by npm ci/install: node_modules matches the lockfile it was installed from
INSTALLED_STAMP = JS_DIR / "node_modules" / ".package-lock.json"


def _installed_is_current() -> bool:
    return INSTALLED_STAMP.exists() and \
        INSTALLED_STAMP.stat().st_mtime >= LOCKFILE.stat().st_mtime


@pytest.fixture(scope="session")
def js_client_installed() -> Path:
    """``npm ci`` in tests/interop/js when node_modules is missing or older than the lock."""
    if node_executable() is None:
        fail_in_ci_else_skip("node is not installed: the interop tests need Node.js >= 18 and npm")
    if _installed_is_current():
        return JS_DIR
    # one worker installs, the others wait for it: `npm ci` starts by deleting
    # node_modules, which killed the JS clients another xdist worker was starting
    with open(JS_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _installed_is_current():
                _npm_ci()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return JS_DIR


def _npm_ci() -> None:
    npm = shutil.which("npm")
    if npm is None:
        fail_in_ci_else_skip(
            "npm is not installed: it installs socket.io-client for the interop tests")
    assert npm is not None
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS_DIR,
            capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("`npm ci` in tests/interop/js took more than 300 s")
    if result.returncode != 0:
        pytest.fail(f"`npm ci` in {JS_DIR} failed ({result.returncode}):\n"
                    f"{result.stdout}\n{result.stderr}")


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"


STORES = {
    "memory": lambda _: "memory://",
    "sqlite": _sqlite_url,
}


@pytest.fixture(params=list(STORES))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        try:
            importlib.import_module("durable_adapter.stores.sql")
        except ImportError as exc:
            pytest.skip(f"durable_adapter.stores.sql cannot be imported: {exc}")
    url: str = STORES[request.param](tmp_path)
    return url


@pytest.fixture(params=["websocket", "polling"])
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name
