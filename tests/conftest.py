"""Run-wide hooks: one summary line per server whose tests were skipped for its absence;
the pending asyncio tasks of a test about to time out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._env import HOW_TO_RUN, skipped_by_server
from tests._hang_report import watch


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = skipped_by_server(terminalreporter.stats.get("skipped", []))
    for server, count in sorted(skipped.items()):
        terminalreporter.write_line(
            f"{count} {server} test{'' if count == 1 else 's'} skipped: no {server} "
            f"server; to run them: "
            f"{HOW_TO_RUN[server]}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    marker = item.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker and marker.args else \
        float(item.config.getini("timeout") or 0)
    if timeout <= 0:
        return (yield)
    gen = watch(item.nodeid, timeout)
    next(gen)
    try:
        return (yield)
    finally:
        gen.close()
