"""Durable Socket.IO connection state recovery for python-socketio."""

from ._recovery import RecoveryFailure, RecoveryOptions
from .asgi import ASGIApp
from .client import AsyncClient
from .emitter import Emitter, SyncEmitter
from .exceptions import (
    ConfigurationError,
    DurableAdapterError,
    SessionDataError,
    StartupError,
    StoreError,
)
from .server import AsyncServer
from .stores import Store, store_from_url
from .transactional import emit_in

__all__ = [
    "ASGIApp",
    "AsyncClient",
    "AsyncServer",
    "ConfigurationError",
    "DurableAdapterError",
    "Emitter",
    "RecoveryFailure",
    "RecoveryOptions",
    "SessionDataError",
    "StartupError",
    "Store",
    "StoreError",
    "SyncEmitter",
    "emit_in",
    "store_from_url",
]
