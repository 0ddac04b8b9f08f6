"""The socket.io-protocol test-suite against each server, as a pass table.

``SOCKETIO_PROTOCOL_SUITE=/path/to/test-suite python -m tests.protocol.suite_table
[--runs N] [--servers stock,off,memory,...] [--web uvicorn|aiohttp]``

Runs the suite ``--runs`` times against each server of ``--servers`` (default: all of
``_suite.SERVERS``), the servers taking turns so that the machine's load falls on all of
them alike, and prints for each test how many runs passed per server, then the tests
whose outcome differs from stock python-socketio's.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from ._suite import SERVERS, differing, listening, run_suite, server_command, suite_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--web", choices=("uvicorn", "aiohttp"), default="uvicorn")
    args = parser.parse_args()
    suite = suite_dir()
    if isinstance(suite, str):
        raise SystemExit(suite)
    names = args.servers.split(",")
    passed: dict[str, Counter[str]] = {name: Counter() for name in names}
    titles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="protocol-suite-") as scratch:
        for run in range(args.runs):
            for name in names:
                where = Path(scratch) / f"{name}-{run}"
                with server_command(name, where / "store", args.web) as command, \
                        listening(command) as port:
                    outcome = run_suite(suite, port, where / "suite")
                titles += [title for title in outcome if title not in titles]
                passed[name].update(title for title, ok in outcome.items() if ok)
                print(f"run {run + 1}, {name}: {sum(outcome.values())}/{len(outcome)} passed",
                      flush=True)
    width = max(map(len, names)) + 1
    print("\n" + "".join(f"{name:>{width}}" for name in names) + "  test")
    for title in titles:
        cells = "".join(f"{passed[name][title]:>{width}}" for name in names)
        print(f"{cells}  {title}")
    print(f"(passes out of {args.runs} runs each; --web {args.web})")
    if "stock" in names:
        stock = {title: passed["stock"][title] for title in titles}
        for name in names:
            if name != "stock":
                mine = {title: passed[name][title] for title in titles}
                changed = differing({t: bool(n) for t, n in stock.items()},
                                    {t: bool(n) for t, n in mine.items()})
                print(f"\n{name} against stock: {len(changed)} differ")
                for title in sorted(changed):
                    print(f"  {title}")


if __name__ == "__main__":
    main()
