"""How the test run treats a missing server: one place reads ``CI`` and words the skip.

Under CI every server the suite needs must be there, so a missing PostgreSQL or Redis
fails its tests instead of skipping them (CI must not pass by testing nothing). MongoDB
is not on the CI machine: its tests skip there too, and the run's summary says how many
and how to run them (tests/conftest.py).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any, NoReturn

import pytest

TRUTHY = frozenset({"1", "true", "yes", "on"})

#: what to do to run a server's tests, named in every skip and in the run's summary
HOW_TO_RUN = {
    "PostgreSQL": "start a server reachable through the libpq variables (PGHOST, PGUSER, "
                  "...), or install the docker extra (pip install -e '.[docker]') and run "
                  "a Docker engine",
    "Redis": "start Redis on 127.0.0.1:6379 (or set DURABLE_ADAPTER_TEST_REDIS), or "
             "install the docker extra (pip install -e '.[docker]') and run a Docker engine",
    "MongoDB": "set DURABLE_ADAPTER_MONGO_URL to a replica set, or install the docker extra "
               "(pip install -e '.[docker]') and run a Docker engine",
}
_SKIPPED = re.compile(r"Skipped: (\w+) unavailable\b")


def in_ci() -> bool:
    """``CI`` holds one of the usual truthy values (true, 1, yes, on; any case)."""
    return os.environ.get("CI", "").strip().lower() in TRUTHY


def fail_in_ci_else_skip(reason: str) -> NoReturn:
    """A missing tool: skip the test, or fail it under CI, where it must run."""
    if in_ci():
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


def server_missing(server: str, detail: str, *, required_in_ci: bool = True) -> NoReturn:
    """Skip a test whose ``server`` is unreachable, saying how to run it; fail it under CI
    unless the server is not ``required_in_ci``."""
    if required_in_ci and in_ci():
        pytest.fail(f"{server} is required under CI: {detail}")
    pytest.skip(f"{server} unavailable ({detail}); to run these tests: {HOW_TO_RUN[server]}")


def skipped_by_server(reports: Iterable[Any]) -> Counter[str]:
    """How many of these skip reports :func:`server_missing` made, per server."""
    counts: Counter[str] = Counter()
    for report in reports:
        longrepr = getattr(report, "longrepr", None)
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            found = _SKIPPED.match(str(longrepr[2]))
            if found and found.group(1) in HOW_TO_RUN:
                counts[found.group(1)] += 1
    return counts
