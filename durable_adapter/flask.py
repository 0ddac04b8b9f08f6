"""Flask-SocketIO with connection state recovery: ``durable_adapter.flask.SocketIO``.

Flask-SocketIO builds its ``socketio.Server`` itself; this subclass of its ``SocketIO``
serves through a :class:`durable_adapter.Server` instead, with the same options, so an
app changes one import and adds ``store=``::

    from durable_adapter.flask import SocketIO

    socketio = SocketIO(app, store="sqlite+aiosqlite:///chat.db",
                        connection_state_recovery={"max_disconnection_duration": 120})

``join_room``, ``emit``, ``request.sid`` and the handlers work as in Flask-SocketIO; a
recovered client comes back with its sid, rooms and missed events. With
``manage_session=True`` (Flask-SocketIO's default) the Socket.IO copy of the Flask
session is kept in the socket's stored session too (under :data:`FLASK_SESSION_KEY`),
so a recovered socket finds ``flask.session`` as it left it. Install with
``pip install durable-adapter[flask]``; ``async_mode`` must be ``threading``.
"""

from __future__ import annotations

from typing import Any

import flask_socketio
from flask_socketio import _ManagedSession

from .server import _DEFAULTS, RecoveryOption
from .stores import Store
from .sync_server import Server

#: the key of the stored session (per namespace) holding Flask-SocketIO's managed copy
#: of the Flask session
FLASK_SESSION_KEY = "_flask_session"


class SocketIO(flask_socketio.SocketIO):  # type: ignore[misc]
    """Flask-SocketIO's ``SocketIO`` on a :class:`durable_adapter.Server`.

    :param store: a store URL or a :class:`~durable_adapter.Store` (as
        :class:`durable_adapter.Server`'s).
    :param connection_state_recovery: as :class:`durable_adapter.Server`'s; ``None`` or
        ``False`` gives Flask-SocketIO's behaviour.
    Every other argument is Flask-SocketIO's; ``message_queue=`` cannot be combined with
    recovery (the store carries what it carried: emit from other processes with
    :class:`durable_adapter.SyncEmitter`).
    """

    def __init__(self, app: Any = None, *, store: str | Store | None = None,
                 connection_state_recovery: RecoveryOption = _DEFAULTS,
                 **kwargs: Any) -> None:
        self._store = store
        self._recovery_option = connection_state_recovery
        super().__init__(app, **kwargs)

    def init_app(self, app: Any, **kwargs: Any) -> None:
        store = kwargs.pop("store", self._store)
        recovery = kwargs.pop("connection_state_recovery", self._recovery_option)
        self.server_options.setdefault("async_mode", "threading")
        super().init_app(app, **kwargs)
        # Flask-SocketIO built a stock server from these options (nothing started yet):
        # ours takes its place, with the handlers registered so far
        options = {name: value for name, value in self.server_options.items()
                   if name not in ("message_queue", "channel")}
        self.server = Server(store=store, connection_state_recovery=recovery, **options)
        self.async_mode = self.server.async_mode
        for event, handler, namespace in self.handlers:
            self.server.on(event, handler, namespace=namespace)
        for namespace_handler in self.namespace_handlers:
            self.server.register_namespace(namespace_handler)
        if app is not None:
            self.sockio_mw.engineio_app = self.server

    def _handle_event(self, handler: Any, message: str, namespace: str, sid: str,
                      *args: Any) -> Any:
        server: Server = self.server
        if not self.manage_session or server.recovery is None:
            return super()._handle_event(handler, message, namespace, sid, *args)
        environ = server.get_environ(sid, namespace=namespace)
        if environ and "saved_session" not in environ and server.is_recovered(sid, namespace):
            kept = server.get_session(sid, namespace=namespace).get(FLASK_SESSION_KEY)
            if isinstance(kept, dict):  # Flask-SocketIO's copy, as the socket left it
                environ["saved_session"] = _ManagedSession(kept)
        result = super()._handle_event(handler, message, namespace, sid, *args)
        managed = environ.get("saved_session") if environ else None
        # pre-connected counts (a connect handler's changes), a leaving socket does not
        if managed is not None and message != "disconnect" \
                and server.manager.eio_sid_from_sid(sid, namespace) is not None:
            session = server.get_session(sid, namespace=namespace)
            if session.get(FLASK_SESSION_KEY) != dict(managed):
                session[FLASK_SESSION_KEY] = dict(managed)
                server.save_session(sid, session, namespace=namespace)
        return result
