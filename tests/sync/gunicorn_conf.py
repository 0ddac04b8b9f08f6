"""gunicorn settings of the sync server tests, as docs/sync.md shows them: a worker
saves its live sessions as soon as it is told to stop (SIGTERM), and at its exit in any
case."""

from __future__ import annotations

from typing import Any


def post_worker_init(worker: Any) -> None:
    from tests.sync.gunicorn_app import sio

    sio.shutdown_on_signal()


def worker_exit(server: Any, worker: Any) -> None:
    from tests.sync.gunicorn_app import sio

    sio.shutdown()
