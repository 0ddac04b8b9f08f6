"""``AsyncClient``: python-socketio's client that recovers its session after a drop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import socketio
from socketio import packet as sio_packet

from . import _socketio
from ._client_recovery import (
    DISCONNECT_FLUSH_TIMEOUT,
    MAX_BUFFERED_EVENTS,
    MAX_PACKETS_PER_POLL,
    ClientRecovery,
    RecoveryStateMixin,
)
from ._payload_limit import raised_limit
from ._redact import redact_pids

logger = logging.getLogger(__name__)

class AsyncClient(RecoveryStateMixin, socketio.AsyncClient):  # type: ignore[misc]
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
        self._recovery = ClientRecovery()
        #: per namespace, events held in arrival order until its connect handler is done
        self._held: dict[str, deque[tuple[int | None, Any]]] = {}

    async def connect(self, *args: Any, **kwargs: Any) -> None:
        # engineio's read loop starts in here and keeps this context: the raised limit
        # applies to this client's connection only
        with raised_limit(MAX_PACKETS_PER_POLL):
            await super().connect(*args, **kwargs)

    async def disconnect(self) -> None:
        """Leave on purpose: nothing to recover afterwards.

        The namespace DISCONNECT packets are flushed before the transport closes (see
        :meth:`_send_packet`), so the server sees a deliberate leave and keeps no session.
        """
        try:
            await super().disconnect()
        finally:
            # only now: an event still arriving while it leaves carries an offset to strip
            self._recovery.clear()

    async def _send_packet(self, pkt: Any) -> None:
        if pkt.packet_type == sio_packet.CONNECT:
            pkt.data = self._recovery.connect_data(pkt.namespace or "/", pkt.data)
        await super()._send_packet(pkt)
        if pkt.packet_type == sio_packet.DISCONNECT:
            # python-engineio closes the websocket without sending what is queued: the
            # server would see a dropped transport and keep the session for a recovery
            queue = _socketio.engineio_send_queue(self.eio)
            if queue is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.join(), DISCONNECT_FLUSH_TIMEOUT)

    async def _handle_connect(self, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        self._recovery.connected(namespace, data)
        # a server may send the missed events before its CONNECT reply (the JS one does);
        # they, and events arriving while the connect handler runs, wait their turn
        held = self._held.setdefault(namespace, deque())
        try:
            await super()._handle_connect(namespace, data)
        finally:
            await self._release_held(namespace, held)

    async def _release_held(self, namespace: str, held: deque[tuple[int | None, Any]]) -> None:
        """Hand over held events in arrival order, then let later ones straight through."""
        try:
            while held and self._held.get(namespace) is held:
                ack_id, data = held.popleft()
                try:
                    await self._deliver(namespace, ack_id, data)
                except Exception:
                    # as in python-socketio, a failing handler loses its own event only
                    self.logger.exception("Handler of a held event failed [%s]", namespace)
        finally:
            if self._held.get(namespace) is held:
                del self._held[namespace]

    async def _handle_event(self, namespace: str | None, id: int | None, data: Any) -> None:
        namespace = namespace or "/"
        held = self._held.get(namespace)
        if held is None and namespace not in self.namespaces \
                and namespace in (self.connection_namespaces or []):
            held = self._held[namespace] = deque()
        if held is not None:
            if len(held) < MAX_BUFFERED_EVENTS:
                held.append((id, data))
            return
        await self._deliver(namespace, id, data)

    async def _deliver(self, namespace: str, id: int | None, data: Any) -> None:
        # recorded before any await: arrival order is only certain up to it
        data = self._recovery.strip(namespace, id, data)
        await super()._handle_event(namespace, id, data)

    async def _handle_disconnect(self, namespace: str | None) -> None:
        # the server closed the namespace on purpose: it kept nothing to recover
        self._recovery.forget(namespace or "/")
        self._held.pop(namespace or "/", None)
        await super()._handle_disconnect(namespace)

    async def _handle_error(self, namespace: str | None, data: Any) -> None:
        self._held.pop(namespace or "/", None)
        await super()._handle_error(namespace, data)

    async def _handle_eio_disconnect(self, reason: Any = None) -> None:
        self._held.clear()
        await super()._handle_eio_disconnect(reason)


_socketio.check_client_surface()
