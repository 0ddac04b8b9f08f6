"""``ASGIApp``: python-socketio's ASGI app whose lifespan shutdown saves the sessions.

``socketio.ASGIApp(sio)`` answers the lifespan events without stopping the server, so
under uvicorn the live sockets' sessions would be saved only if their websockets were
closed before the process exits. This one runs :meth:`AsyncServer.shutdown` before it
reports ``lifespan.shutdown.complete``, whoever answers the lifespan (the Engine.IO app,
its ``on_shutdown``, or ``other_asgi_app``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import socketio

Message = MutableMapping[str, Any]


class ASGIApp(socketio.ASGIApp):  # type: ignore[misc]
    """``socketio.ASGIApp(sio, ...)``, same arguments; ``sio.shutdown()`` runs at the
    lifespan shutdown, after any ``on_shutdown`` of yours."""

    def __init__(self, socketio_server: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(socketio_server, *args, **kwargs)
        self._sio = socketio_server

    async def __call__(self, scope: MutableMapping[str, Any],
                       receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "lifespan":
            await super().__call__(scope, receive, send)
            return

        async def send_after_shutdown(message: Message) -> None:
            if message.get("type") == "lifespan.shutdown.complete":
                await self._sio.shutdown()
            await send(message)

        await super().__call__(scope, receive, send_after_shutdown)
