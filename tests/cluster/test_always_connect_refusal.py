"""``always_connect=True`` with ``skip_middlewares=True``: a client the connect handler
refused must not get in by reconnecting with the pid it was sent.

With ``always_connect`` python-socketio sends the CONNECT reply (and with it the pid)
before the connect handler runs; this handler takes 0.3 s, then refuses. The client
comes back with that pid: it must not be admitted as a recovered socket without the
handler running (``skip_middlewares`` skips the handler for a *recovered* socket, and
a refused connection is no session to recover). It gets a fresh session, which the
handler refuses again, or a refusal: either way the handler runs.
"""

from __future__ import annotations

import pytest

from tests import _harness
from tests.cluster.conftest import ClusterStore
from tests.cluster.faults import Peer, close_all, counters, eventually, node, running

pytestmark = pytest.mark.timeout(60)
HANDLER_WITHIN = 5.0  # seconds for the connect handler of the reconnect to run


async def test_refused_client_cannot_reconnect_past_the_handler(
        fault_store: ClusterStore) -> None:
    a = node("a", fault_store, "--always-connect", "--skip-middlewares")
    first = Peer(auth={"slow_refuse": True})
    again: Peer | None = None
    async with running(a):
        try:
            await first.connect(a.url)  # the CONNECT reply comes before the handler
            sent = first.state_at_connect
            assert sent and sent.get("/", {}).get("pid"), f"no pid was sent: {sent}"
            await _harness.until(lambda: not first.client.connected,
                                 "the handler's refusal of the first connection")
            assert (await counters(a))["slow_refuse"] == 1

            again = Peer(auth={"slow_refuse": True})
            again.client.load_recovery_state(sent)
            try:
                await again.connect(a.url)
            except Exception as exc:  # a refusal is fine, if the handler said it
                print(f"the reconnect was refused: {exc!r}")
            readmitted = again.last_sid == first.last_sid and again.client.is_recovered()


            async def handler_ran() -> bool:
                return (await counters(a))["slow_refuse"] >= 2

            assert await eventually(handler_ran, HANDLER_WITHIN), (
                f"the connect handler did not run for the reconnect with the refused "
                f"connection's pid (admitted as recovered with the refused sid: "
                f"{readmitted}, still connected: {again.client.connected})")
            await _harness.until(lambda: not again.client.connected,
                                 "the handler's refusal of the reconnect")
        finally:
            await close_all(first, again)
