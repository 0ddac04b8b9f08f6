"""The public socket.io-protocol test-suite against our server, beside stock python-socketio.

The suite (``test-suite/`` of https://github.com/socketio/socket.io-protocol, mocha) is
not in this repository and CI cannot fetch it: these tests run only where
``SOCKETIO_PROTOCOL_SUITE`` names a copy with its npm dependencies installed, and skip
otherwise (tests/README.md says how to set one up).

python-socketio fails some of the suite's tests on its own (python-engineio rounds the
300 ms ping interval down to whole seconds in its handshake, answers an unknown
namespace with "Unable to connect", ...). What is checked is that we change nothing:

* recovery off: exactly the tests stock python-socketio passes pass;
* recovery on: the tests that pass differently are among those the JS server fails only
  with its own recovery on (expected.json's ``js_recovery_changes``, recorded with
  ``python -m tests.protocol.suite_table``): its CONNECT reply carries a pid, its events
  an offset. And all of those fail on ours too: recovery is really on.

Some of the suite's tests are races of its own, won or lost run to run on every server,
JS included (expected.json's ``racy``, each with its reason): they are left out of the
comparison. For the others a server runs again, up to ATTEMPTS times, while the
comparison does not hold, and a test counts as passed if it passed in any run: a real
difference (a pid, an offset, a wrong status) fails every run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ._suite import differing, listening, run_suite, server_command, suite_dir

SUITE = suite_dir()
pytestmark = pytest.mark.skipif(isinstance(SUITE, str), reason=str(SUITE))

ATTEMPTS = 3  # runs of the suite per server at most (about 10 s each)
EXPECTED = json.loads(Path(__file__).with_name("expected.json").read_text())
JS_RECOVERY_CHANGES = frozenset(EXPECTED["js_recovery_changes"])
RACY = frozenset(EXPECTED["racy"])


class Passes:
    """The suite's titles and whether each passed in any run so far against one server."""

    def __init__(self, name: str, scratch: Path) -> None:
        self.name = name
        self.scratch = scratch
        self.passed: dict[str, bool] = {}
        self.runs = 0

    def run(self) -> None:
        assert isinstance(SUITE, Path)
        where = self.scratch / f"{self.name}-{self.runs}"
        with server_command(self.name, where / "store") as command, listening(command) as port:
            outcome = run_suite(SUITE, port, where / "suite")
        for title, ok in outcome.items():
            self.passed[title] = self.passed.get(title, False) or ok
        self.runs += 1


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Passes:
    return Passes("stock", tmp_path_factory.mktemp("stock"))


def differences(stock: Passes, mine: Passes, allowed: frozenset[str]) -> set[str]:
    """Run both until the titles passing differently are all ``allowed`` (or ATTEMPTS
    runs of each); return those titles."""
    while True:
        if stock.runs <= mine.runs:
            stock.run()
        mine.run()
        changed = differing(stock.passed, mine.passed) - RACY
        if changed <= allowed or mine.runs >= ATTEMPTS:
            return changed


def describe(stock: Passes, mine: Passes, titles: set[str]) -> str:
    return "; ".join(f"{title}: stock {'passes' if stock.passed.get(title) else 'fails'}, "
                     f"{mine.name} {'passes' if mine.passed.get(title) else 'fails'}"
                     for title in sorted(titles))


def test_recovery_off_passes_what_stock_python_socketio_passes(
        stock: Passes, tmp_path: Path) -> None:
    mine = Passes("off", tmp_path)
    changed = differences(stock, mine, frozenset())
    assert not changed, f"after {mine.runs} runs: {describe(stock, mine, changed)}"


@pytest.mark.parametrize("store", ["memory", "sqlite", "postgres"])
def test_recovery_on_differs_only_where_js_recovery_does(
        stock: Passes, tmp_path: Path, store: str) -> None:
    mine = Passes(store, tmp_path)
    changed = differences(stock, mine, JS_RECOVERY_CHANGES)
    unexpected = changed - JS_RECOVERY_CHANGES
    assert not unexpected, f"after {mine.runs} runs: {describe(stock, mine, unexpected)}"
    # a pid in every CONNECT reply, an offset on every event: never passed, in any run
    passed = sorted(title for title in JS_RECOVERY_CHANGES if mine.passed.get(title, True))
    assert not passed, f"recovery on, yet passed (or did not run): {passed}"
