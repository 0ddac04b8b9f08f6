"""``sio.rooms(sid)`` and the rooms a session is saved with follow every way a socket
enters or leaves a room: the manager answers them from its own per-socket index, not by
scanning every room of the namespace (issue 11: a written-through session asks at each
change of its socket).
"""

from __future__ import annotations

from tests._harness import WAIT
from tests.conformance.conftest import Peer, running
from tests.conformance.test_room_history import _rooms_handlers


async def test_rooms_follow_enter_leave_close_room_drop_and_recovery() -> None:
    async with running("memory://") as node:
        _rooms_handlers(node)
        first, second = Peer(), Peer()
        await first.connect(node.url)
        await second.connect(node.url)
        a, b = first.sid(), second.sid()
        for room in ("x", "y", "z"):
            await first.client.call("join", room, timeout=WAIT)
        await second.client.call("join", "y", timeout=WAIT)
        await first.client.call("leave", "x", timeout=WAIT)
        await first.client.call("leave", "never-joined", timeout=WAIT)
        await node.sio.close_room("y")
        assert sorted(node.sio.rooms(a)) == sorted([a, "z"])
        assert node.sio.rooms(b) == [b]

        state = await first.drop(node)
        assert node.sio.rooms(a) == []  # gone with its socket
        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered() and again.sid() == a
        assert sorted(node.sio.rooms(a)) == sorted([a, "z"])  # as saved at the drop

        await second.client.disconnect()
        await node.wait_gone(b)
        assert node.sio.rooms(b) == []
        await again.client.disconnect()
