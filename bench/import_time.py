"""What ``import durable_adapter`` costs, against ``import socketio`` in the same run.

Each measurement is a fresh interpreter that times one import statement with
``time.perf_counter`` (the interpreter's own start-up is not counted) and lists which
heavy packages that import loaded. The rows are measured in alternation, round after
round, so a busy neighbour slows them alike; the table shows medians and the ratio to
``import socketio``, which python-socketio's own users pay anyway.

    python bench/import_time.py              # 15 rounds
    python bench/import_time.py --rounds 31

``python -X importtime -c "import durable_adapter"`` shows where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import ROOT, median, ratio, table

HEAVY = ("sqlalchemy", "alembic", "aiohttp", "prometheus_client", "redis", "pymongo")
RUN_WAIT = 60.0  # seconds one interpreter may take

#: row label -> the import statement it times
ROWS = {
    "import socketio (baseline)": "import socketio",
    "import durable_adapter": "import durable_adapter",
    "+ AsyncServer, AsyncClient": "import durable_adapter\n"
                                  "from durable_adapter import AsyncServer, AsyncClient",
    "+ the SQL store (store_from_url)": "import durable_adapter\n"
                                        "import durable_adapter.stores.sql",
    # what `import durable_adapter` did before its names were imported on first use
    "everything at once (0.1.0's import)": "import durable_adapter.asgi, "
    "durable_adapter.client, durable_adapter.emitter, durable_adapter.server, "
    "durable_adapter.transactional, durable_adapter.metrics\n"
    "durable_adapter.metrics.enabled()",
}

PROGRAM = """\
import json, sys, time
started = time.perf_counter()
exec(compile(sys.argv[1], "<timed>", "exec"))
elapsed = time.perf_counter() - started
heavy = json.loads(sys.argv[2])
print(json.dumps([elapsed, sorted(m for m in heavy if m in sys.modules)]))
"""


def measure(statement: str) -> tuple[float, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, statement, json.dumps(HEAVY)], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=RUN_WAIT, check=True)
    elapsed, loaded = json.loads(result.stdout)
    return float(elapsed), list(loaded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    times: dict[str, list[float]] = {label: [] for label in ROWS}
    loaded: dict[str, list[str]] = {}
    for _ in range(args.rounds):
        for label, statement in ROWS.items():
            elapsed, modules = measure(statement)
            times[label].append(elapsed)
            loaded[label] = modules
    base = median(times["import socketio (baseline)"])
    rows = [(label, median(samples) * 1000, ratio(median(samples), base),
             ", ".join(loaded[label]) or "-") for label, samples in times.items()]
    print(f"{args.rounds} rounds, median import time; python {sys.version.split()[0]}")
    print(table(["import", "ms", "vs socketio", "heavy packages loaded"], rows))


if __name__ == "__main__":
    main()
