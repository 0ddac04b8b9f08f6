"""gunicorn settings of the sync server tests: save the live sessions at a worker's exit."""

from __future__ import annotations

from typing import Any


def worker_exit(server: Any, worker: Any) -> None:
    from tests.sync.gunicorn_app import sio

    sio.shutdown()
