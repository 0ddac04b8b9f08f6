"""The private python-socketio names we rely on are listed, and checked on its classes.

CI runs this on the oldest and the newest supported python-socketio.
"""

from __future__ import annotations

import engineio.async_client
import pytest
import socketio

import durable_adapter
from durable_adapter import _socketio
from durable_adapter._cluster import ClusterManager
from durable_adapter.manager import DurableManager

SURFACES = [
    (durable_adapter.AsyncServer, socketio.AsyncServer, _socketio.SERVER_NAMES),
    (durable_adapter.AsyncClient, socketio.AsyncClient, _socketio.CLIENT_NAMES),
    (ClusterManager, socketio.AsyncManager, _socketio.MANAGER_NAMES),
    (DurableManager, socketio.AsyncManager, _socketio.MANAGER_NAMES),
]


@pytest.mark.parametrize(("ours", "theirs", "names"), SURFACES,
                         ids=[ours.__name__ for ours, _, _ in SURFACES])
def test_every_python_socketio_method_we_override_is_listed(
        ours: type, theirs: type, names: tuple[str, ...]) -> None:
    overridden = {name for name in vars(ours)
                  if name.startswith("_") and not name.startswith("__") and hasattr(theirs, name)}
    assert overridden <= set(names), f"unlisted: {sorted(overridden - set(names))}"


def test_the_listed_names_exist_in_this_python_socketio() -> None:
    _socketio.check_server_surface()
    _socketio.check_client_surface()
    _socketio.check_manager_surface()


@pytest.mark.parametrize(("check", "cls", "name"), [
    (_socketio.check_server_surface, socketio.AsyncServer, "_handle_eio_connect"),
    (_socketio.check_client_surface, socketio.AsyncClient, "_handle_event"),
])
def test_a_name_gone_from_python_socketio_fails_the_check(
        monkeypatch: pytest.MonkeyPatch, check: object, cls: type, name: str) -> None:
    # our subclasses define these methods themselves: only python-socketio's class can tell
    monkeypatch.delattr(cls, name)
    with pytest.raises(ImportError, match=name):
        check()  # type: ignore[operator]


def test_a_manager_without_a_listed_name_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socketio, "AsyncManager", type("AsyncManager", (), {}))
    with pytest.raises(ImportError, match="basic_disconnect"):
        _socketio.check_manager_surface()


def test_an_engineio_client_decoding_elsewhere_fails_the_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(engineio.async_client, "payload")
    with pytest.raises(ImportError, match="payload"):
        _socketio.check_client_surface()
