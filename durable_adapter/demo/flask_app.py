"""The chat demo on Flask-SocketIO: ``durable-adapter demo --flask``.

The same page and routes as :mod:`.app` (``/``, ``/static/``, ``POST /say``, ``/ready``,
``/metrics`` when metrics are on), served by a Flask app whose Socket.IO server is
:class:`durable_adapter.flask.SocketIO`, behind Werkzeug's threaded server: what a
Flask-SocketIO app looks like once it recovers. Needs ``durable-adapter[flask]``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import flask
from werkzeug.serving import make_server

from .. import metrics
from ..flask import SocketIO
from .app import HERE, MAX_BODY, RECOVERY, make_message

logger = logging.getLogger(__name__)


def create_app(store: str) -> tuple[flask.Flask, SocketIO]:
    """The demo's Flask app and its Flask-SocketIO server."""
    app = flask.Flask(__name__, static_folder=str(HERE / "static"),
                      static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    socketio = SocketIO(app, store=store, connection_state_recovery=RECOVERY)
    server = socketio.server

    @app.get("/")
    def index() -> Any:
        response = flask.send_file(HERE / "index.html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.post("/say")
    def say() -> Any:
        body = flask.request.get_json(silent=True)
        try:
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            msg = make_message(body.get("name", "server"), body.get("text"))
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}, 400
        socketio.emit("message", msg)
        server.flush()  # committed when the answer goes
        return {"ok": True, "message": msg}

    @app.get("/ready")
    def ready() -> Any:
        answer = server.ready()
        return answer.reason, answer.http_status, {"Content-Type": "text/plain"}

    if metrics.enabled():
        @app.get("/metrics")
        def exposition() -> Any:
            body, content_type = metrics.render(flask.request.headers.get("Accept", ""))
            return body, 200, {"Content-Type": content_type}

    @socketio.on("connect")
    def connect(auth: Any = None) -> None:
        sid = flask.request.sid  # type: ignore[attr-defined]
        failure = server.recovery_failure(sid)
        if server.is_recovered(sid):
            logger.info("demo: %s reconnected and recovered", sid)
        else:
            logger.info("demo: %s connected, new session%s", sid,
                        f" ({failure.value})" if failure else "")

    @socketio.on("message")
    def message(data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            return {"ok": False, "error": "expected {name, text}"}
        try:
            msg = make_message(data.get("name"), data.get("text"))
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        socketio.emit("message", msg)  # to everyone, sender included; stored for replay
        return {"ok": True}

    @socketio.on("whoami")
    def whoami(*args: Any) -> dict[str, Any]:
        sid = flask.request.sid  # type: ignore[attr-defined]
        failure = server.recovery_failure(sid)
        return {"sid": sid, "recovered": server.is_recovered(sid),
                "failure": failure.value if failure else None, "now": time.time()}

    return app, socketio


def run(store: str, host: str, port: int,
        ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then save the live pages' sessions and stop."""
    app, socketio = create_app(store)
    socketio.server.open_store()  # a StartupError here is the CLI's one line
    http = make_server(host, port, app, threaded=True)

    def stop(_signum: int, _frame: Any) -> None:
        def run_stop() -> None:
            logger.info("demo: stopping")
            socketio.server.shutdown()
            http.shutdown()

        threading.Thread(target=run_stop, name="demo-stop").start()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    shown = f"[{host}]" if ":" in host else host
    if ready is not None:
        ready(f"http://{shown}:{http.server_port}/")
    http.serve_forever()
