"""Running the socket.io-protocol test-suite (mocha) against a server, and reading the results.

The suite lives in ``test-suite/`` of https://github.com/socketio/socket.io-protocol; it is
not part of this repository. ``SOCKETIO_PROTOCOL_SUITE`` names a copy of that directory
with its npm dependencies installed (``npm ci`` there). The suite talks to
``http://localhost:3000``, fixed in its source: each run copies ``test-suite.js`` into a
scratch directory with that URL pointed at the server under test, so servers listen on
ephemeral ports and never meet another process on port 3000.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ENV = "SOCKETIO_PROTOCOL_SUITE"
SUITE_URL = 'const URL = "http://localhost:3000";'
RUN_LIMIT = 120.0  # seconds for one run of the suite (about 10 s)
START_LIMIT = 30.0  # seconds for a server to print its port
ROOT = Path(__file__).resolve().parents[2]
JS_SOCKET_IO = ROOT / "bench" / "js" / "node_modules" / "socket.io"

#: the servers compared: python-socketio's own, ours with recovery off, ours with it on
#: per store, and JS socket.io 4.8 without and with its recovery
SERVERS = ("stock", "off", "memory", "sqlite", "postgres", "js-off", "js-on")


def suite_dir() -> Path | str:
    """The suite named by ``SOCKETIO_PROTOCOL_SUITE``, or why it cannot be run."""
    named = os.environ.get(ENV, "").strip()
    if not named:
        return (f"{ENV} is not set: point it at the test-suite/ directory of a "
                "socketio/socket.io-protocol checkout, after `npm ci` there")
    suite = Path(named)
    if not (suite / "test-suite.js").is_file():
        return f"{ENV}={named} holds no test-suite.js"
    if not (suite / "node_modules" / "mocha" / "bin" / "mocha").is_file():
        return f"{ENV}={named} has no node_modules/mocha: run `npm ci` there first"
    if shutil.which("node") is None:
        return "node is not on PATH"
    return suite


@contextmanager
def server_command(name: str, scratch: Path, web: str = "uvicorn") -> Iterator[list[str]]:
    """The command starting server ``name`` (one of :data:`SERVERS`), its store ready
    for the block: a new SQLite file in ``scratch``, a new PostgreSQL schema (dropped
    after)."""
    if name.startswith("js-"):
        if not JS_SOCKET_IO.is_dir():
            raise RuntimeError("run `npm ci` in bench/js first (the JS server's socket.io)")
        yield ["node", str(ROOT / "tests" / "protocol" / "suite_server.js"), name[3:]]
        return
    python = [sys.executable, "-m", "tests.protocol.suite_app", "--web", web]
    if name in ("stock", "off"):
        yield [*python, name]
    elif name == "memory":
        yield [*python, "on", "--store", "memory://"]
    elif name == "sqlite":
        scratch.mkdir(parents=True, exist_ok=True)
        yield [*python, "on", "--store", f"sqlite+aiosqlite:///{scratch / 'store.db'}"]
    elif name == "postgres":
        from tests._postgres import POSTGRES_URL, postgres_schema_sync

        with postgres_schema_sync() as schema:
            yield [*python, "on", "--store", POSTGRES_URL, "--schema", schema]
    else:
        raise ValueError(f"unknown server {name!r}; known: {', '.join(SERVERS)}")


@contextmanager
def listening(command: Sequence[str]) -> Iterator[int]:
    """Start a server that prints ``{"port": P}`` once it listens; yield P; stop it."""
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as process:
        try:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], START_LIMIT)
            line = process.stdout.readline() if ready else ""
            if not line:
                raise RuntimeError(f"{' '.join(command)} printed no port within "
                                   f"{START_LIMIT}s (exit status {process.poll()})")
            yield int(json.loads(line)["port"])
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def run_suite(suite: Path, port: int, scratch: Path) -> dict[str, bool]:
    """Run the suite against ``127.0.0.1:port``: each test's full title, and whether it
    passed. ``scratch`` is a new directory for the copy and mocha's JSON report."""
    source = (suite / "test-suite.js").read_text()
    if SUITE_URL not in source:
        raise RuntimeError(f"{suite}/test-suite.js no longer declares {SUITE_URL!r}")
    scratch.mkdir(parents=True)
    (scratch / "test-suite.js").write_text(
        source.replace(SUITE_URL, f'const URL = "http://127.0.0.1:{port}";'))
    for name in ("package.json", "node-imports.js"):
        shutil.copyfile(suite / name, scratch / name)
    (scratch / "node_modules").symlink_to(suite.resolve() / "node_modules")
    report = scratch / "report.json"
    started = time.monotonic()
    subprocess.run(
        ["node", "node_modules/mocha/bin/mocha", "--reporter", "json",
         "--reporter-option", f"output={report}", "--exit", "test-suite.js"],
        cwd=scratch, timeout=RUN_LIMIT, capture_output=True, check=False)
    if not report.is_file():
        raise RuntimeError(f"mocha wrote no report in {scratch} "
                           f"({time.monotonic() - started:.0f} s)")
    results = json.loads(report.read_text())
    outcome = {test["fullTitle"]: True for test in results["passes"]}
    # a test failing twice (an assertion after its own timeout) stays one failure
    outcome.update({test["fullTitle"]: False for test in results["failures"]})
    return outcome


def differing(left: dict[str, bool], right: dict[str, bool]) -> set[str]:
    """Titles that passed on one side only, or ran on one side only."""
    return {title for title in left.keys() | right.keys()
            if left.get(title) != right.get(title)}
