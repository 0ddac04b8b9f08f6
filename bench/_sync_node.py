"""One sync benchmark server process: python-socketio's ``socketio.Server`` or
``durable_adapter.Server``, ``async_mode='threading'`` behind Werkzeug's threaded server.

``python bench/_sync_node.py --kind plain|ours [--store URL [--schema S]]`` prints
``{"port": P, "control": P, "name": N}`` once it listens, then serves Socket.IO and:

* ``POST /emit`` ``{"count", "room", "size"}``: emit ``count`` events ``ev`` to ``room``
  one after the other from this one request's thread (a fan-out from one handler).
* ``GET /cpu``: this process's CPU seconds (user + system) so far.
* ``POST /profile`` ``{"path": P}``: cProfile the emits' threads and the server's loop
  thread from now on; ``{}``: stop and write ``P.emit`` and ``P.loop``.
* ``GET /frames``: as ``bench/_node.py``'s: frames put on the sockets' queues by the
  sync server's ``SyncFrames`` (``direct``) or through python-socketio (``queued``).

A client whose auth carries ``room`` joins it at a fresh connect (a recovered one is
back in it). SIGTERM shuts down and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import socketio
from werkzeug.serving import WSGIRequestHandler, make_server

import durable_adapter

StartResponse = Callable[..., Any]


def make_store(url: str, schema: str | None) -> Any:
    if schema:
        from durable_adapter.stores.sql.postgres import PostgresStore

        return PostgresStore(url, schema=schema)
    return url


def build(kind: str, store: Any) -> socketio.Server:
    if kind == "plain":
        return socketio.Server(async_mode="threading", http_compression=False)
    return durable_adapter.Server(store=store, http_compression=False,
                                  connection_state_recovery=True)


class Profiling:
    """cProfiles of the emitting request threads and of the server's loop thread (each
    thread needs its own profiler), dumped to ``PATH.emit`` and ``PATH.loop``."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.emit = cProfile.Profile()
        self.loop: cProfile.Profile | None = None

    def toggle(self, sio: socketio.Server, path: str | None) -> bool:
        loop = sio._loop.loop if isinstance(sio, durable_adapter.Server) else None
        if path:
            self.path, self.emit = path, cProfile.Profile()
            if loop is not None:
                self.loop = cProfile.Profile()
                loop.call_soon_threadsafe(self.loop.enable)
            return True
        if self.path is not None:
            self.emit.dump_stats(f"{self.path}.emit")
            if loop is not None and self.loop is not None:
                done = threading.Event()
                profile = self.loop

                def stop() -> None:
                    profile.disable()
                    done.set()

                loop.call_soon_threadsafe(stop)
                done.wait(10)
                profile.dump_stats(f"{self.path}.loop")
            self.path = None
        return False

    @contextlib.contextmanager
    def here(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        self.emit.enable()
        try:
            yield
        finally:
            self.emit.disable()


profiling = Profiling()


def control(sio: socketio.Server) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        answer: dict[str, Any]
        if path == "/emit":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"{}")
            count, room = int(body["count"]), body.get("room")
            pad = "x" * int(body.get("size", 100))
            t0 = time.monotonic()
            with profiling.here():
                for i in range(count):
                    sio.emit("ev", {"i": i, "pad": pad}, to=room)
            answer = {"t0": t0, "elapsed": time.monotonic() - t0}
        elif path == "/frames":  # as bench/_node.py's: frames queued by SyncFrames or not
            frames = sio.core.durable_manager.direct \
                if isinstance(sio, durable_adapter.Server) else None
            answer = {"direct": frames.direct if frames else 0,
                      "queued": frames.queued if frames else 0}
        elif path == "/profile":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"{}")
            answer = {"profiling": profiling.toggle(sio, body.get("path"))}
        elif path == "/cpu":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            answer = {"cpu": usage.ru_utime + usage.ru_stime}
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]

    return app


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=("plain", "ours"), required=True)
    parser.add_argument("--name", default="node")
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--schema", default=None)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sio = build(args.kind, make_store(args.store, args.schema))

    @sio.event
    def connect(sid: str, environ: Any, auth: Any) -> None:
        recovered = isinstance(sio, durable_adapter.Server) and sio.is_recovered(sid)
        if not recovered and isinstance(auth, dict) and auth.get("room"):
            sio.enter_room(sid, auth["room"])

    server = make_server("127.0.0.1", args.port, socketio.WSGIApp(sio, control(sio)),
                         threaded=True, request_handler=QuietHandler)

    def stop(_signum: int, _frame: Any) -> None:
        def run() -> None:
            sio.shutdown()
            server.shutdown()

        threading.Thread(target=run).start()

    signal.signal(signal.SIGTERM, stop)
    port = server.server_port
    print(json.dumps({"port": port, "control": port, "name": args.name}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
