"""Run-wide hooks: one summary line per server whose tests were skipped for its absence."""

from __future__ import annotations

import pytest

from tests._env import HOW_TO_RUN, skipped_by_server


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = skipped_by_server(terminalreporter.stats.get("skipped", []))
    for server, count in sorted(skipped.items()):
        terminalreporter.write_line(
            f"{count} {server} test{'' if count == 1 else 's'} skipped: no {server} "
            f"server; to run them: "
            f"{HOW_TO_RUN[server]}")
