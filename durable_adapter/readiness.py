"""Start-up checks and readiness: is the store there, with the tables this release needs?

A server opens its store at start-up (:meth:`AsyncServer.open_store`, run by the aiohttp
``on_startup`` hook that ``sio.attach(app)`` registers and by :class:`~.asgi.ASGIApp`'s
lifespan startup); ``durable-adapter check --store URL`` asks the same of a URL, for
scripts and container healthchecks; :meth:`AsyncServer.ready` answers a readiness probe.
Every failure is one line that names the fix: a start-up that fails ends the process
with that line, never with a server that answers every handshake with HTTP 401.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .exceptions import ConfigurationError, DurableAdapterError, StartupError, StoreError
from .stores import existing_store

if TYPE_CHECKING:
    from .manager import DurableManager

STARTUP_WAIT = 30.0  # seconds a start-up gives the store to open (a host that drops packets)
PROBE_WAIT = 5.0  # seconds a readiness probe gives the store to answer
PREFIX = "durable_adapter: "
#: said after a failure whose message does not name a fix of its own
REACH_HINT = "check the URL and that the database is up and accepts connections"


@dataclass(frozen=True)
class Readiness:
    """A readiness answer: true when ready, with the reason (one line) either way."""

    ready: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ready

    @property
    def http_status(self) -> int:
        return 200 if self.ready else 503


def failure_line(error: BaseException, *, waited: float = STARTUP_WAIT) -> str:
    """``error`` as one line starting ``durable_adapter:``, naming what to do.

    A :class:`ConfigurationError` says what is wrong and what is accepted (the missing
    tables say to run ``durable-adapter migrate``); a store that cannot be reached
    (:class:`StoreError`, no answer in time) gets :data:`REACH_HINT`.
    """
    if isinstance(error, StartupError):
        return str(error)
    text = " ".join(str(error).split())  # driver messages span lines
    if isinstance(error, TimeoutError):
        text = f"the store did not answer within {waited:g} s; {REACH_HINT}"
    elif isinstance(error, StoreError):
        text = f"{text}; {REACH_HINT}"
    elif not isinstance(error, DurableAdapterError):  # says what it is, not where
        text = f"cannot open the store: {type(error).__name__}: {text}"
    return PREFIX + text


async def open_at_startup(manager: DurableManager) -> None:
    """Open the store and start following it, within :data:`STARTUP_WAIT` seconds.

    :raises StartupError: with :func:`failure_line`'s one line.
    """
    try:
        await asyncio.wait_for(manager.start(), STARTUP_WAIT)
    except Exception as exc:
        raise StartupError(failure_line(exc)) from exc


async def probe(manager: DurableManager) -> Readiness:
    """Ready when the store is open (opened now if no start-up hook did), answers within
    :data:`PROBE_WAIT` seconds, and this node's lease has not lapsed; not ready once a
    shutdown began, so a load balancer stops sending clients here."""
    if not manager.sending:
        return Readiness(False, PREFIX + "shutting down")
    try:
        await open_at_startup(manager)
        await asyncio.wait_for(manager.store.bounds(), PROBE_WAIT)
    except StartupError as exc:
        return Readiness(False, str(exc))
    except Exception as exc:
        return Readiness(False, failure_line(exc, waited=PROBE_WAIT))
    if manager.lease.lapsed:
        return Readiness(False, PREFIX + "this node's lease in the store lapsed (renewals "
                                "fail or come late): other nodes may take its sessions")
    return Readiness(True, "ready")


async def check_store(url: str, *, schema: str | None = None,
                      wait: float = STARTUP_WAIT) -> Readiness:
    """Open the store at ``url`` as a server would but never migrate it or create a
    SQLite file, read its history bounds, close it: ready when that worked, else the
    one-line reason.

    :param url: a store URL (``durable-adapter check --store URL``).
    :param schema: the PostgreSQL schema of the tables, if not the default.
    :param wait: seconds the whole check may take.
    """
    try:
        store = existing_store(url, schema=schema)
    except ConfigurationError as exc:
        return Readiness(False, failure_line(exc))

    async def open_and_read() -> None:
        await store.open()
        try:
            await store.bounds()
        finally:
            await store.close()

    try:
        await asyncio.wait_for(open_and_read(), wait)
    except Exception as exc:
        return Readiness(False, failure_line(exc, waited=wait))
    return Readiness(True, "ready: the store answers and its schema is current")


class Probed(Protocol):
    """What a readiness route asks: a server's ``ready()`` (``AsyncServer``, ``Server``)."""

    async def ready(self) -> Readiness: ...


def aiohttp_handler(sio: Probed) -> Callable[[Any], Awaitable[Any]]:
    """An aiohttp handler answering 200 ``ready`` or 503 and the reason, from
    :meth:`AsyncServer.ready`.

    Usage::

        app.router.add_get("/ready", durable_adapter.readiness.aiohttp_handler(sio))
    """
    async def ready(_request: Any) -> Any:
        from aiohttp import web  # only apps served by aiohttp need it

        answer = await sio.ready()
        return web.Response(status=answer.http_status, text=answer.reason + "\n")

    return ready
