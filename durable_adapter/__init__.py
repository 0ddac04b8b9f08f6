"""Durable Socket.IO connection state recovery for python-socketio."""

from ._recovery import RecoveryFailure, RecoveryOptions
from .client import AsyncClient
from .exceptions import ConfigurationError, DurableAdapterError, SessionDataError, StoreError
from .server import AsyncServer
from .stores import Store, store_from_url

__all__ = [
    "AsyncClient",
    "AsyncServer",
    "ConfigurationError",
    "DurableAdapterError",
    "RecoveryFailure",
    "RecoveryOptions",
    "SessionDataError",
    "Store",
    "StoreError",
    "store_from_url",
]
