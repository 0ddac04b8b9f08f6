"""One sync server node, run as its own process: a ``durable_adapter.Server`` behind
Werkzeug's threaded server, or (``--flask``) a Flask-SocketIO app on
``durable_adapter.flask.SocketIO``.

``python -m tests.sync.node_app --store URL [--schema S] [--flask] [--ping-interval S]
[--ping-timeout S]`` prints ``{"port": P}`` once it listens on 127.0.0.1, then serves
Socket.IO and a small control surface: ``POST /emit`` (``{"event", "start", "stop", "to"}``:
emits ``start``... ``stop - 1`` one by one, to a room or sid or everybody; answers once
they are committed; or the cluster nodes' ``{"tag", "start", "count", "to"}``: events
``seq`` ``{"tag", "i"}``, as ``tests/cluster/node_app.py`` emits them),
``GET /connects/<sid>`` (how its latest connect went: recovered, why not, rooms, session,
Flask session), ``GET /sockets/<sid>`` (whether this node holds it). SIGTERM saves the
live sessions and exits.

Every socket that connects fresh joins the room ``lobby`` and keeps its auth's ``user``
in its session (the Flask variant in ``flask.session`` as well). The event ``join``
(a room name) enters that room and acks True once the stored session has it; ``burst``
(a count) emits that many ``tick`` to the sender, then acks ``"done"``; in the
Flask variant ``say`` (a text) emits ``said`` (the text and the session's user) to the
room with Flask-SocketIO's ``emit``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

import flask
from werkzeug.serving import make_server

import durable_adapter
from tests.cluster.node_app import handover_timeout, lease_expiry, make_store

ROOM = "lobby"
OPTIONS: dict[str, Any] = {"ping_interval": 1, "ping_timeout": 2}


def recovery() -> dict[str, Any]:
    """The recovery options, with the lease and handover times the environment sets
    (``DURABLE_ADAPTER_LEASE_EXPIRY``, ``DURABLE_ADAPTER_HANDOVER_TIMEOUT``)."""
    options: dict[str, Any] = {"max_disconnection_duration": 60}
    if lease_expiry() is not None:
        options["lease_expiry"] = lease_expiry()
    if handover_timeout() is not None:
        options["handover_timeout"] = handover_timeout()
    return options


def control(app: flask.Flask, sio: durable_adapter.Server,
            connects: dict[str, dict[str, Any]]) -> None:
    @app.post("/emit")
    def emit() -> Any:
        body = flask.request.get_json()
        if "tag" in body:  # the cluster nodes' form (tests/cluster/node_app.py)
            numbers = range(body["start"], body["start"] + body["count"])
            for i in numbers:
                sio.emit("seq", {"tag": body["tag"], "i": i}, to=body.get("to"))
            sio.flush()
            return {"done": len(numbers), "failed": []}
        for i in range(body["start"], body["stop"]):
            sio.emit(body.get("event", "tick"), i, to=body.get("to"))
        sio.flush()  # committed when the answer goes: the test orders nodes' emits by it
        return {"emitted": body["stop"] - body["start"]}

    @app.get("/connects/<sid>")
    def connect_of(sid: str) -> Any:
        return connects.get(sid, {})

    @app.get("/sockets/<sid>")
    def holds(sid: str) -> Any:
        return {"held": sio.manager.is_connected(sid, "/")}


def plain(store: Any, options: dict[str, Any] | None = None
          ) -> tuple[Any, durable_adapter.Server]:
    sio = durable_adapter.Server(store=store, connection_state_recovery=recovery(),
                                 **(options or OPTIONS))
    connects: dict[str, dict[str, Any]] = {}

    @sio.event
    def connect(sid: str, environ: Any, auth: Any) -> None:
        recovered = sio.is_recovered(sid)
        failure = sio.recovery_failure(sid)
        connects[sid] = {"recovered": recovered, "failure": failure and failure.value,
                         "rooms": sorted(sio.rooms(sid)), "session": sio.get_session(sid)}
        if not recovered:
            sio.enter_room(sid, ROOM)
            sio.save_session(sid, {"user": (auth or {}).get("user")})

    @sio.on("join")
    def join(sid: str, room: str) -> bool:
        sio.enter_room(sid, room)  # returns once the stored session has the room
        return True

    @sio.on("burst")
    def burst(sid: str, count: int) -> str:
        for i in range(count):  # its ack goes out after these
            sio.emit("tick", i, to=sid)
        return "done"

    @sio.on("*")
    def any_event(event: str, sid: str, *args: Any) -> Any:
        return ["echo", *args]

    app = flask.Flask(__name__)
    control(app, sio, connects)
    import socketio

    return socketio.WSGIApp(sio, app), sio


def with_flask(store: Any, options: dict[str, Any] | None = None
               ) -> tuple[Any, durable_adapter.Server]:
    import flask_socketio

    from durable_adapter.flask import SocketIO

    app = flask.Flask(__name__)
    app.secret_key = "test"
    socketio = SocketIO(app, store=store, connection_state_recovery=recovery(),
                        **(options or OPTIONS))
    connects: dict[str, dict[str, Any]] = {}

    @socketio.on("connect")
    def connect(auth: Any) -> None:
        sid = flask.request.sid  # type: ignore[attr-defined]
        server = socketio.server
        recovered = server.is_recovered(sid)
        failure = server.recovery_failure(sid)
        connects[sid] = {"recovered": recovered, "failure": failure and failure.value,
                         "rooms": sorted(flask_socketio.rooms()),
                         "session": {k: v for k, v in server.get_session(sid).items()
                                     if not k.startswith("_")},
                         "flask_session": dict(flask.session)}
        if not recovered:
            flask_socketio.join_room(ROOM)
            flask.session["user"] = (auth or {}).get("user")

    @socketio.on("say")
    def say(text: str) -> None:  # Flask-SocketIO's emit, in a handler: stored, offset
        flask_socketio.emit("said", {"text": text, "user": flask.session.get("user")},
                            to=ROOM)

    control(app, socketio.server, connects)
    return app, socketio.server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--schema", default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--flask", action="store_true")
    parser.add_argument("--ping-interval", type=float, default=OPTIONS["ping_interval"])
    parser.add_argument("--ping-timeout", type=float, default=OPTIONS["ping_timeout"])
    args = parser.parse_args()
    store = make_store(args.store, args.schema, None)
    options = {"ping_interval": args.ping_interval, "ping_timeout": args.ping_timeout}
    app, sio = (with_flask if args.flask else plain)(store, options)
    sio.open_store()
    server = make_server("127.0.0.1", args.port, app, threaded=True)

    def stop(_signum: int, _frame: Any) -> None:
        def run() -> None:
            sio.shutdown()
            server.shutdown()

        threading.Thread(target=run).start()

    signal.signal(signal.SIGTERM, stop)
    print(json.dumps({"port": server.server_port}), flush=True)
    server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
