"""Fixtures of the sync server tests: the interop suite's (socket.io-client installed,
each transport)."""

from tests.interop.conftest import js_client_installed, transport  # noqa: F401
