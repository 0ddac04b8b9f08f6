"""``Client``: python-socketio's sync client that recovers its session after a drop.

The sync twin of :class:`~durable_adapter.AsyncClient`, on the same rules
(:class:`~._client_recovery.ClientRecovery`). One difference in how handlers run:
python-socketio's sync client handles each message in a thread of its own, so two events
can reach their handlers out of order and the last offset seen could go back. This
client hands messages to one thread of its own, in arrival order; acks (which a handler
waiting in ``call()`` needs) are handled at once, as python-socketio handles them.
"""

from __future__ import annotations

import queue
import threading
import time
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
from ._payload_limit import with_limit
from ._redact import redact_pids

#: Socket.IO's ACK packet as it starts on the wire (text): handled as soon as it is read
_ACK_PREFIX = str(sio_packet.ACK)


class Client(RecoveryStateMixin, socketio.Client):  # type: ignore[misc]
    """A ``socketio.Client`` that speaks connection state recovery.

    It keeps the private id and last offset of each namespace, sends them when it
    reconnects, strips offsets before handlers see them, and tells whether the latest
    connection recovered. Handlers run one at a time, in the order events arrived.

    Example::

        client = durable_adapter.Client()

        @client.event
        def connect():
            print("recovered" if client.is_recovered() else "new session")
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        redact_pids(self.logger)  # its CONNECT packets carry the pid: never log it whole
        redact_pids(self.eio.logger)
        self._recovery = ClientRecovery()
        #: events of a namespace that arrived before its CONNECT reply
        self._held: dict[str, deque[tuple[int | None, Any]]] = {}
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._dispatcher: threading.Thread | None = None
        self._dispatch_lock = threading.Lock()
        _socketio.route_engineio_messages(self.eio, self._receive)
        _socketio.wrap_engineio_tasks(self.eio, with_limit(MAX_PACKETS_PER_POLL))

    def disconnect(self) -> None:
        """Leave on purpose: nothing to recover afterwards."""
        try:
            super().disconnect()
        finally:
            self._recovery.clear()

    # -- messages, in order ------------------------------------------------------

    def _receive(self, data: Any) -> None:
        """Engine.IO's message, in the read loop's thread, in arrival order."""
        if isinstance(data, str) and data.startswith(_ACK_PREFIX):
            self._handle_eio_message(data)  # a handler may be waiting for it in call()
            return
        self._inbox.put(data)
        with self._dispatch_lock:
            if self._dispatcher is None or not self._dispatcher.is_alive():
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name="durable_adapter-client", daemon=True)
                self._dispatcher.start()

    def _dispatch(self) -> None:
        while True:  # a daemon thread: it waits for messages as long as the client lives
            data = self._inbox.get()
            try:
                self._handle_eio_message(data)
            except Exception:  # as in python-socketio: a failing handler loses its event
                self.logger.exception("Handler of a received message failed")
            finally:
                self._inbox.task_done()

    def _drained(self, within: float) -> None:
        """Wait (bounded) until the messages read so far were handled."""
        if threading.current_thread() is self._dispatcher:
            return
        deadline = time.monotonic() + within
        while self._inbox.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    # -- python-socketio's hooks -------------------------------------------------

    def _send_packet(self, pkt: Any) -> None:
        if pkt.packet_type == sio_packet.CONNECT:
            pkt.data = self._recovery.connect_data(pkt.namespace or "/", pkt.data)
        super()._send_packet(pkt)
        if pkt.packet_type == sio_packet.DISCONNECT:
            # python-engineio closes the websocket without sending what is queued: the
            # server would see a dropped transport and keep the session for a recovery
            send_queue = getattr(self.eio, "queue", None)
            deadline = time.monotonic() + DISCONNECT_FLUSH_TIMEOUT
            while getattr(send_queue, "unfinished_tasks", 0) \
                    and self.eio.state == "connected" and time.monotonic() < deadline:
                time.sleep(0.005)

    def _handle_connect(self, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        self._recovery.connected(namespace, data)
        held = self._held.setdefault(namespace, deque())
        try:
            super()._handle_connect(namespace, data)
        finally:
            while held and self._held.get(namespace) is held:
                ack_id, event = held.popleft()
                try:
                    self._deliver(namespace, ack_id, event)
                except Exception:
                    self.logger.exception("Handler of a held event failed [%s]", namespace)
            if self._held.get(namespace) is held:
                del self._held[namespace]

    def _handle_event(self, namespace: str | None, id: int | None, data: Any) -> None:
        namespace = namespace or "/"
        held = self._held.get(namespace)
        if held is None and namespace not in self.namespaces \
                and namespace in (self.connection_namespaces or []):
            # a server may send the missed events before its CONNECT reply
            held = self._held[namespace] = deque()
        if held is not None:
            if len(held) < MAX_BUFFERED_EVENTS:
                held.append((id, data))
            return
        self._deliver(namespace, id, data)

    def _deliver(self, namespace: str, id: int | None, data: Any) -> None:
        super()._handle_event(namespace, id, self._recovery.strip(namespace, id, data))

    def _handle_disconnect(self, namespace: str | None) -> None:
        self._recovery.forget(namespace or "/")
        self._held.pop(namespace or "/", None)
        super()._handle_disconnect(namespace)

    def _handle_error(self, namespace: str | None, data: Any) -> None:
        self._held.pop(namespace or "/", None)
        super()._handle_error(namespace, data)

    def _handle_eio_disconnect(self, reason: Any = None) -> None:
        # what was read before the drop is handled first (its offsets count)
        self._drained(DISCONNECT_FLUSH_TIMEOUT * 5)
        self._held.clear()
        super()._handle_eio_disconnect(reason)


_socketio.check_sync_client_surface()
