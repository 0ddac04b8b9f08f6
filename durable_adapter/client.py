"""``AsyncClient``: python-socketio's client that recovers its session after a drop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import engineio.payload
import socketio
from socketio import packet as sio_packet

from ._redact import redact_pids

logger = logging.getLogger(__name__)

#: events buffered for a namespace whose CONNECT reply has not arrived yet
MAX_BUFFERED_EVENTS = 100_000
#: a long-poll response may carry a whole replay; python-engineio refuses more than 16
#: packets per response by default (a class-wide limit, so raising it is process-wide)
MAX_PACKETS_PER_POLL = 100_000
DISCONNECT_FLUSH_TIMEOUT = 1.0  # seconds to let a deliberate DISCONNECT reach the server


@dataclass
class _Recovery:
    pid: str
    offset: str | None = None


class AsyncClient(socketio.AsyncClient):  # type: ignore[misc]
    """A ``socketio.AsyncClient`` that speaks connection state recovery.

    It keeps the private id and last offset of each namespace, sends them when it
    reconnects (with the application's auth; the application's keys win on a clash),
    strips offsets before handlers see them, buffers events that arrive before the
    CONNECT reply, and tells whether the latest connection recovered.

    Example::

        client = durable_adapter.AsyncClient()

        @client.event
        async def connect():
            print("recovered" if client.is_recovered() else "new session")
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        redact_pids(self.logger)  # its CONNECT packets carry the pid: never log it whole
        redact_pids(self.eio.logger)
        if engineio.payload.Payload.max_decode_packets < MAX_PACKETS_PER_POLL:
            engineio.payload.Payload.max_decode_packets = MAX_PACKETS_PER_POLL
        self._recovery: dict[str, _Recovery] = {}
        self._recovered: dict[str, bool] = {}
        self._early_events: dict[str, list[tuple[int | None, list[Any]]]] = {}

    def is_recovered(self, namespace: str | None = None) -> bool:
        """True when the latest connection to ``namespace`` got its old session back."""
        return self._recovered.get(namespace or "/", False)

    def last_offset(self, namespace: str | None = None) -> str | None:
        state = self._recovery.get(namespace or "/")
        return state.offset if state else None

    def recovery_state(self) -> dict[str, dict[str, str | None]]:
        """The pid and last offset per namespace, to resume from another process."""
        return {ns: {"pid": s.pid, "offset": s.offset} for ns, s in self._recovery.items()}

    def load_recovery_state(self, state: dict[str, dict[str, str | None]]) -> None:
        """Resume with a :meth:`recovery_state` saved earlier; call before ``connect``."""
        for namespace, values in state.items():
            pid = values.get("pid")
            if isinstance(pid, str):
                self._recovery[namespace] = _Recovery(pid=pid, offset=values.get("offset"))

    async def disconnect(self) -> None:
        """Leave on purpose: nothing to recover afterwards.

        The namespace DISCONNECT packets are flushed before the transport closes, so the
        server sees a deliberate leave and keeps no session (python-socketio's client
        closes the websocket at once, and the server then sees a 'transport close').
        """
        self._recovery.clear()
        for namespace in list(self.namespaces):
            await self._send_packet(self.packet_class(sio_packet.DISCONNECT,
                                                      namespace=namespace))
        if self.eio.state == "connected":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.eio.queue.join(), DISCONNECT_FLUSH_TIMEOUT)
        await super().disconnect()

    async def _send_packet(self, pkt: Any) -> None:
        namespace = pkt.namespace or "/"
        state = self._recovery.get(namespace)
        if pkt.packet_type == sio_packet.CONNECT and state is not None \
                and isinstance(pkt.data, dict | None):
            credentials: dict[str, Any] = {"pid": state.pid}
            if state.offset is not None:
                credentials["offset"] = state.offset
            pkt.data = {**credentials, **(pkt.data or {})}
        await super()._send_packet(pkt)

    async def _handle_connect(self, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        pid = data.get("pid") if isinstance(data, dict) else None
        previous = self._recovery.get(namespace)
        recovered = isinstance(pid, str) and previous is not None and previous.pid == pid
        self._recovered[namespace] = recovered
        if not isinstance(pid, str):
            self._recovery.pop(namespace, None)
        elif not recovered:
            self._recovery[namespace] = _Recovery(pid=pid)
        await super()._handle_connect(namespace, data)
        # a server may send the missed events before its CONNECT reply (the JS one does)
        for ack_id, event in self._early_events.pop(namespace, []):
            await self._handle_event(namespace, ack_id, event)

    async def _handle_event(self, namespace: str | None, id: int | None, data: Any) -> None:
        namespace = namespace or "/"
        if namespace not in self.namespaces and namespace in (self.connection_namespaces or []):
            early = self._early_events.setdefault(namespace, [])
            if len(early) < MAX_BUFFERED_EVENTS:
                early.append((id, data))
            return
        state = self._recovery.get(namespace)
        # stored events carry their offset last; ack'd events never do (JS client's rule).
        # Record it before any await: arrival order is only certain up to the first one.
        if state is not None and id is None and isinstance(data, list) and len(data) > 1 \
                and isinstance(data[-1], str):
            state.offset = data[-1]
            data = data[:-1]
        await super()._handle_event(namespace, id, data)

    async def _handle_disconnect(self, namespace: str | None) -> None:
        # the server closed the namespace on purpose: it kept nothing to recover
        self._recovery.pop(namespace or "/", None)
        await super()._handle_disconnect(namespace)

    async def _handle_error(self, namespace: str | None, data: Any) -> None:
        self._early_events.pop(namespace or "/", None)
        await super()._handle_error(namespace, data)

    async def _handle_eio_disconnect(self, reason: Any = None) -> None:
        self._early_events.clear()
        await super()._handle_eio_disconnect(reason)
