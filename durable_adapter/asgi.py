"""``ASGIApp``: python-socketio's ASGI app that opens the store at the lifespan startup
and saves the sessions at the lifespan shutdown.

``socketio.ASGIApp(sio)`` answers the lifespan events without touching the server. This
one runs :meth:`AsyncServer.open_store` before it reports
``lifespan.startup.complete``: a store that cannot be used is reported as
``lifespan.startup.failed`` with one line naming the fix, and the ASGI server exits
(uvicorn with status 3). It runs :meth:`AsyncServer.shutdown` before it reports
``lifespan.shutdown.complete``, so under uvicorn the live sockets' sessions are saved.
Both hold whoever answers the lifespan (the Engine.IO app, its ``on_startup`` and
``on_shutdown``, or ``other_asgi_app``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import socketio

from .exceptions import StartupError

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ASGIApp(socketio.ASGIApp):  # type: ignore[misc]
    """``socketio.ASGIApp(sio, ...)``, same arguments, plus:

    :param ready_path: answer HTTP GETs of this path (e.g. ``"/ready"``) with 200 or 503
        from :meth:`AsyncServer.ready`, for load balancers and orchestrators.

    ``sio.open_store()`` runs at the lifespan startup, after any ``on_startup`` of yours;
    ``sio.shutdown()`` at the lifespan shutdown, after any ``on_shutdown`` of yours.
    """

    def __init__(self, socketio_server: Any, *args: Any, ready_path: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(socketio_server, *args, **kwargs)
        self._sio = socketio_server
        self._ready_path = ready_path

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive,
                       send: Send) -> None:
        if scope["type"] == "http" and self._ready_path is not None \
                and scope["path"] == self._ready_path:
            await self._answer_ready(send)
        elif scope["type"] == "lifespan":
            await super().__call__(scope, receive, self._lifespan_sender(send))
        else:
            await super().__call__(scope, receive, send)

    def _lifespan_sender(self, send: Send) -> Send:
        async def send_checked(message: Message) -> None:
            kind = message.get("type")
            if kind == "lifespan.startup.complete":
                try:
                    await self._sio.open_store()
                except StartupError as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
            elif kind == "lifespan.shutdown.complete":
                await self._sio.shutdown()
            await send(message)

        return send_checked

    async def _answer_ready(self, send: Send) -> None:
        answer = await self._sio.ready()
        await send({"type": "http.response.start", "status": answer.http_status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body",
                    "body": (answer.reason + "\n").encode()})
