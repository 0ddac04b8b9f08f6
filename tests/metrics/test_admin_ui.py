"""python-socketio's admin UI instrumentation (``sio.instrument()``) on our server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import socketio

from tests._harness import WAIT, Inbox, serving

from ._servers import Client, make_server, sqlite_url, wait_for


async def test_admin_namespace_sees_our_sockets_and_their_recovery(tmp_path: Path) -> None:
    sio = make_server(sqlite_url(tmp_path))
    admin = sio.instrument(auth=False)
    try:
        async with serving(sio) as url:
            client = await Client().connect(url)
            sid = client.sio.get_sid("/")

            snapshots, connected, sent = Inbox(), Inbox(), Inbox()
            watcher = socketio.AsyncClient(reconnection=False)
            watcher.on("all_sockets", snapshots.put, namespace="/admin")
            watcher.on("socket_connected", lambda s, _at: connected.put(s),
                       namespace="/admin")
            watcher.on("event_sent", lambda *args: sent.put(args), namespace="/admin")
            await asyncio.wait_for(watcher.connect(url, namespaces=["/admin"],
                                                   transports=["websocket"]), WAIT)
            [sockets] = await snapshots.wait_for(1)
            assert (sid, "/") in {(s["id"], s["nsp"]) for s in sockets}
            assert watcher.get_sid("/admin") is not None  # /admin itself does not recover

            # a stored emit is reported to the admin UI, and still reaches the client
            await sio.emit("tick", 1)
            await client.ticks.wait_for(1)
            await wait_for(lambda: any(a[1] == sid and a[2][0] == "tick" for a in sent.items),
                           "the admin UI to see the emit")

            # the client drops and recovers: the admin UI sees the same sid come back
            state = await client.drop(sio)
            await sio.emit("tick", 2)
            seen = len(connected.items)
            back = await Client(state).connect(url)
            await back.ticks.wait_for(1)
            assert back.sio.is_recovered() and back.sio.get_sid("/") == sid
            assert back.ticks.items[0] == 2
            await wait_for(lambda: any(s["id"] == sid and s["nsp"] == "/"
                                       for s in connected.items[seen:]),
                           "the admin UI to see the recovered socket connect")
            await back.sio.disconnect()
            await watcher.disconnect()
    finally:
        admin.uninstrument()

