"""Durable Socket.IO connection state recovery for python-socketio.

The names below are imported when first used, not by ``import durable_adapter``: an app
that uses one store does not pay for the drivers, SQLAlchemy and Alembic of the others
(``bench/import_time.py`` measures it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .exceptions import (
    ConfigurationError,
    DurableAdapterError,
    SessionDataError,
    StartupError,
    StoreError,
)

if TYPE_CHECKING:
    from ._recovery import RecoveryFailure, RecoveryOptions
    from .asgi import ASGIApp
    from .client import AsyncClient
    from .emitter import AsyncEmitter, Emitter, SyncEmitter
    from .server import AsyncServer
    from .stores import Store, store_from_url
    from .sync_client import Client
    from .sync_server import Server
    from .transactional import emit_in

#: public name -> the module (relative to this package) that defines it
_LAZY: dict[str, str] = {
    "ASGIApp": ".asgi",
    "AsyncClient": ".client",
    "AsyncEmitter": ".emitter",
    "AsyncServer": ".server",
    "Client": ".sync_client",
    "Emitter": ".emitter",
    "RecoveryFailure": "._recovery",
    "RecoveryOptions": "._recovery",
    "Server": ".sync_server",
    "Store": ".stores",
    "SyncEmitter": ".emitter",
    "emit_in": ".transactional",
    "store_from_url": ".stores",
}

#: modules a user reaches as attributes (``durable_adapter.metrics.enable()`` after a
#: plain ``import durable_adapter``), imported at that first access
_SUBMODULES = frozenset({"cleanup", "cli", "metrics", "migrate", "stores", "transactional"})

__all__ = [
    "ASGIApp",
    "AsyncClient",
    "AsyncEmitter",
    "AsyncServer",
    "Client",
    "ConfigurationError",
    "DurableAdapterError",
    "Emitter",
    "RecoveryFailure",
    "RecoveryOptions",
    "Server",
    "SessionDataError",
    "StartupError",
    "Store",
    "StoreError",
    "SyncEmitter",
    "__version__",
    "emit_in",
    "store_from_url",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from ._version import version

        value: Any = version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
