"""pytest plugin for python-socketio's own test suite (see socketio_own_tests.sh).

With ``SOCKETIO_SWAP=durable`` it replaces python-socketio's ``AsyncServer``,
``AsyncClient``, ``Server`` and ``Client`` (the package attributes and the module
attributes the tests reach them by) with durable_adapter's subclasses, the servers with
recovery off: they must behave exactly as stock.
Either way it writes one ``<outcome> <test id>`` line per test to ``SOCKETIO_OUTCOMES``,
so the script can compare the stock run with the swapped one; swapped, it also writes how
many of each swapped class the tests built to ``SOCKETIO_OUTCOMES.built``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import socketio
from socketio import async_client, async_server, client, server

import durable_adapter

#: instances built per swapped class: a swap the tests never reach would prove nothing
_built: dict[str, int] = {"RecoveryOffServer": 0, "DurableClient": 0,
                          "RecoveryOffSyncServer": 0, "DurableSyncClient": 0}


class RecoveryOffServer(durable_adapter.AsyncServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("connection_state_recovery", None)
        kwargs.setdefault("store", "memory://")
        super().__init__(*args, **kwargs)
        _built["RecoveryOffServer"] += 1


class DurableClient(durable_adapter.AsyncClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _built["DurableClient"] += 1


class RecoveryOffSyncServer(durable_adapter.Server):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("connection_state_recovery", None)
        kwargs.setdefault("store", "memory://")
        super().__init__(*args, **kwargs)
        _built["RecoveryOffSyncServer"] += 1


class DurableSyncClient(durable_adapter.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _built["DurableSyncClient"] += 1


#: test id -> outcome; a failure in any phase (setup, call, teardown) makes it "failed"
_outcomes: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    mode = os.environ.get("SOCKETIO_SWAP", "stock")
    if mode == "durable":
        for module in (socketio, async_server):
            module.AsyncServer = RecoveryOffServer
        for module in (socketio, async_client):
            module.AsyncClient = DurableClient
        for module in (socketio, server):
            module.Server = RecoveryOffSyncServer
        for module in (socketio, client):
            module.Client = DurableSyncClient
    elif mode != "stock":
        raise pytest.UsageError(f"SOCKETIO_SWAP must be 'stock' or 'durable', not {mode!r}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed or report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = report.outcome


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _outcomes[f"{report.nodeid} (collection)"] = "failed"


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("SOCKETIO_OUTCOMES")
    if not path:
        return
    with open(path, "w") as out:
        out.writelines(f"{outcome} {nodeid}\n" for nodeid, outcome in sorted(_outcomes.items()))
    if os.environ.get("SOCKETIO_SWAP") == "durable":
        with open(f"{path}.built", "w") as out:
            out.writelines(f"{name} {count}\n" for name, count in _built.items())
