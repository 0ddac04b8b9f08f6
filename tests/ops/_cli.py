"""The ``durable-adapter`` command and the test apps as child processes of the ops tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN_WAIT = 60.0  # seconds for one command, interpreter start included


def child_env() -> dict[str, str]:
    """This environment, with the checkout importable (``tests.ops.*_app``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return env


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m durable_adapter ARGS`` to its end (bounded), output captured."""
    return subprocess.run([sys.executable, "-m", "durable_adapter", *args], env=child_env(),
                          capture_output=True, text=True, timeout=RUN_WAIT, check=False)
