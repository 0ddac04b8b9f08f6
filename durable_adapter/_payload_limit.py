"""A higher packets-per-payload limit for durable_adapter's client, and for nothing else.

A long-poll response may carry a whole replay, but python-engineio refuses a payload of
more than ``Payload.max_decode_packets`` (16) packets: a class attribute shared by every
engineio client and server in the process. Raising it would weaken a server's guard
against floods too. Instead, engineio's async client decodes through a subclass whose
limit comes from a context variable, which only our client sets (its read loop, started
inside ``connect``, inherits it); everyone else keeps the class attribute's limit.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import types
from collections.abc import Callable, Iterator
from typing import Any

import engineio.async_client
import engineio.client
import engineio.payload

_limit: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "durable_adapter_max_decode_packets", default=None)


class _ScopedPayload(engineio.payload.Payload):  # type: ignore[misc]
    @property
    def max_decode_packets(self) -> int:
        default: int = engineio.payload.Payload.max_decode_packets
        scoped = _limit.get()
        return default if scoped is None else max(scoped, default)


def _install() -> None:
    """Point engineio's clients (only) at a payload module using ``_ScopedPayload``."""
    for client in (engineio.async_client, engineio.client):
        if getattr(client.payload, "Payload", None) is _ScopedPayload:
            continue
        shim = types.ModuleType(engineio.payload.__name__, engineio.payload.__doc__)
        shim.__dict__.update(vars(engineio.payload))
        shim.Payload = _ScopedPayload  # type: ignore[attr-defined]
        client.payload = shim


@contextlib.contextmanager
def raised_limit(packets: int) -> Iterator[None]:
    """Within this context (and tasks started in it), engineio clients accept ``packets``."""
    _install()
    token = _limit.set(packets)
    try:
        yield
    finally:
        _limit.reset(token)


def with_limit(packets: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wraps a thread's target so that it runs with ``packets`` accepted: the sync
    client's read loop runs in a thread, which inherits no context variable."""
    _install()

    def wrap(target: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(target)
        def run(*args: Any, **kwargs: Any) -> Any:
            with raised_limit(packets):
                return target(*args, **kwargs)

        return run

    return wrap
