"""What a client keeps to recover, per namespace: its pid, its last offset, and whether
its latest connection recovered. One set of rules for :class:`~.client.AsyncClient`
and :class:`~.sync_client.Client`; each face only calls them at its own hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._offsets import parse_offset

#: events held for a namespace until its CONNECT reply and connect handler are done
MAX_BUFFERED_EVENTS = 100_000
#: a long-poll response may carry a whole replay; python-engineio refuses more than 16
#: packets per response by default (raised for our clients only, see _payload_limit)
MAX_PACKETS_PER_POLL = 100_000
DISCONNECT_FLUSH_TIMEOUT = 1.0  # seconds to let a deliberate DISCONNECT reach the server

RecoveryState = dict[str, dict[str, str | None]]


@dataclass
class _Position:
    pid: str
    offset: str | None = None


class ClientRecovery:
    """The pid and last offset of each namespace, and which ones recovered."""

    def __init__(self) -> None:
        self._positions: dict[str, _Position] = {}
        self._recovered: dict[str, bool] = {}

    def is_recovered(self, namespace: str) -> bool:
        return self._recovered.get(namespace, False)

    def last_offset(self, namespace: str) -> str | None:
        position = self._positions.get(namespace)
        return position.offset if position else None

    def state(self) -> RecoveryState:
        return {ns: {"pid": p.pid, "offset": p.offset} for ns, p in self._positions.items()}

    def load(self, state: RecoveryState) -> None:
        for namespace, values in state.items():
            pid = values.get("pid")
            if isinstance(pid, str):
                self._positions[namespace] = _Position(pid=pid, offset=values.get("offset"))

    def connect_data(self, namespace: str, data: Any) -> Any:
        """The CONNECT payload with this namespace's pid and offset (the application's
        auth keys win on a clash); unchanged when there is nothing to recover."""
        position = self._positions.get(namespace)
        if position is None or not isinstance(data, dict | None):
            return data
        credentials: dict[str, Any] = {"pid": position.pid}
        if position.offset is not None:
            credentials["offset"] = position.offset
        return {**credentials, **(data or {})}

    def connected(self, namespace: str, data: Any) -> None:
        """The server's CONNECT reply: recovered when it gave the pid we sent back."""
        pid = data.get("pid") if isinstance(data, dict) else None
        previous = self._positions.get(namespace)
        recovered = isinstance(pid, str) and previous is not None and previous.pid == pid
        self._recovered[namespace] = recovered
        if not isinstance(pid, str):
            self._positions.pop(namespace, None)
        elif not recovered:
            self._positions[namespace] = _Position(pid=pid)

    def strip(self, namespace: str, ack_id: int | None, data: Any) -> Any:
        """An event's arguments without its offset, which becomes the last one seen.

        Stored events carry their offset last; ack'd events never do (the JS client's
        rule). Only a value in our offset format is one: a volatile
        ``emit("typing", "alice")`` keeps its argument.
        """
        position = self._positions.get(namespace)
        if position is not None and ack_id is None and isinstance(data, list) \
                and len(data) > 1 and parse_offset(data[-1]) is not None:
            position.offset = data[-1]
            return data[:-1]
        return data

    def forget(self, namespace: str) -> None:
        """The server closed the namespace on purpose: it kept nothing to recover."""
        self._positions.pop(namespace, None)

    def clear(self) -> None:
        self._positions.clear()


class RecoveryStateMixin:
    """The public recovery accessors both clients share (``AsyncClient``, ``Client``),
    over their :class:`ClientRecovery`."""

    _recovery: ClientRecovery

    def is_recovered(self, namespace: str | None = None) -> bool:
        """True when the latest connection to ``namespace`` got its old session back."""
        return self._recovery.is_recovered(namespace or "/")

    def last_offset(self, namespace: str | None = None) -> str | None:
        return self._recovery.last_offset(namespace or "/")

    def recovery_state(self) -> RecoveryState:
        """The pid and last offset per namespace, to resume from another process."""
        return self._recovery.state()

    def load_recovery_state(self, state: RecoveryState) -> None:
        """Resume with a :meth:`recovery_state` saved earlier; call before ``connect``."""
        self._recovery.load(state)

