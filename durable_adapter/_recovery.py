"""Recovery options, outcomes, and the decision of what a reconnecting client is owed."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ._offsets import parse_offset
from .exceptions import ConfigurationError
from .stores.base import LIVE_EXPIRY, HistoryBounds, Session

DEFAULT_MAX_DISCONNECTION_DURATION = 120.0  # seconds, as the JS server
DEFAULT_MAX_REPLAY_PACKETS = 100_000  # packets owed to one restore; over it: refused
DEFAULT_LEASE_EXPIRY = 10.0  # seconds a node that stopped renewing its lease counts as alive
DEFAULT_HANDOVER_TIMEOUT = 3.0  # seconds a reconnect waits for the live owner to let go
DEFAULT_HISTORY_CACHE_BYTES = 32 * 2**20  # memory for the recent history (``_recent``)
REPLAY_PAGE = 1000  # packets read per query during a restore


class RecoveryFailure(enum.Enum):
    """Why a client that asked to recover got a fresh session instead."""

    MALFORMED = "malformed pid or offset"
    UNKNOWN_SESSION = "unknown, expired or already recovered session"
    HISTORY_RESET = "the offset belongs to another history (store reset or replaced)"
    OFFSET_AHEAD = "the offset is ahead of what the session was sent"
    NOT_RETAINED = "packets after the offset are no longer retained"
    REPLAY_TOO_LARGE = "more missed packets than max_replay_packets"
    STORE_UNAVAILABLE = "the store could not be read"


@dataclass(frozen=True, kw_only=True)
class RecoveryOptions:
    """``connection_state_recovery=`` of :class:`durable_adapter.AsyncServer`.

    :param max_disconnection_duration: seconds a session stays recoverable.
    :param skip_middlewares: when True a recovered socket does not run the connect
        handler (JS semantics); when False (our default) the handler runs on recovery
        too and may reject it, and ``is_recovered`` tells it apart.
    :param max_replay_packets: a restore owed more packets is refused (packets sent
        elsewhere meanwhile do not count).
    :param namespaces: namespaces that recover; None means all but ``/admin``.
    :param lease_expiry: seconds after its last lease renewal (every third of it) that a
        node counts as dead, and its sockets' sessions are taken over by the node their
        client reconnects to. A node that cannot renew for that long closes its sockets.
    :param handover_timeout: seconds a reconnect waits for the live node holding its
        session to close the old socket; one that does not answer counts as dead.
    :param write_through: False writes sessions only at a drop (a killed node's sockets
        then cannot recover); for comparison.
    :param history_cache_bytes: memory (bytes, about) a node keeps for its recent
        packets: each is encoded once for all its recipients, and a replay of recent
        packets reads no store. 0 turns it off.
    :param cleanup_in_server: True: the servers of a SQL or Redis store purge it
        themselves, one at a time (no ``durable-adapter cleanup`` process needed). A
        memory store is always purged by its server.
    """

    max_disconnection_duration: float = DEFAULT_MAX_DISCONNECTION_DURATION
    skip_middlewares: bool = False
    max_replay_packets: int = DEFAULT_MAX_REPLAY_PACKETS
    namespaces: frozenset[str] | None = None
    lease_expiry: float = DEFAULT_LEASE_EXPIRY
    handover_timeout: float = DEFAULT_HANDOVER_TIMEOUT
    write_through: bool = True
    history_cache_bytes: int = DEFAULT_HISTORY_CACHE_BYTES
    cleanup_in_server: bool = False

    @classmethod
    def from_value(cls, value: RecoveryOptions | Mapping[str, Any] | bool | None
                   ) -> RecoveryOptions | None:
        """What ``connection_state_recovery=`` accepts: these options, a dict of their
        fields, True (every default), or None or False (recovery off). Validated alike."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, RecoveryOptions):
            return cls.from_mapping({f.name: getattr(value, f.name) for f in fields(value)})
        return cls.from_mapping(value)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> RecoveryOptions:
        if not isinstance(options, Mapping):
            raise ConfigurationError(
                "connection_state_recovery must be a dict, a RecoveryOptions, True, "
                f"or None, got {type(options).__name__}")
        known = {"max_disconnection_duration", "skip_middlewares", "max_replay_packets",
                 "namespaces", "lease_expiry", "handover_timeout", "write_through",
                 "history_cache_bytes", "cleanup_in_server"}
        unknown = set(options) - known
        if unknown:
            raise ConfigurationError(
                f"unknown connection_state_recovery option(s) {sorted(unknown)}; "
                f"accepted: {sorted(known)}")
        duration = options.get("max_disconnection_duration", DEFAULT_MAX_DISCONNECTION_DURATION)
        if isinstance(duration, bool) or not isinstance(duration, int | float) or duration <= 0:
            raise ConfigurationError("max_disconnection_duration must be a positive number")
        skip = options.get("skip_middlewares", False)
        if not isinstance(skip, bool):
            raise ConfigurationError("skip_middlewares must be True or False")
        cap = options.get("max_replay_packets", DEFAULT_MAX_REPLAY_PACKETS)
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ConfigurationError("max_replay_packets must be a positive integer")
        namespaces = options.get("namespaces")
        if namespaces is not None:
            if isinstance(namespaces, str) or not all(isinstance(n, str) for n in namespaces):
                raise ConfigurationError("namespaces must be a list of namespace names")
            namespaces = frozenset(namespaces)
        cache = options.get("history_cache_bytes", DEFAULT_HISTORY_CACHE_BYTES)
        if isinstance(cache, bool) or not isinstance(cache, int) or cache < 0:
            raise ConfigurationError("history_cache_bytes must be an integer >= 0")
        seconds = {name: options.get(name, default) for name, default in (
            ("lease_expiry", DEFAULT_LEASE_EXPIRY),
            ("handover_timeout", DEFAULT_HANDOVER_TIMEOUT))}
        for name, value in seconds.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        write_through = options.get("write_through", True)
        if not isinstance(write_through, bool):
            raise ConfigurationError("write_through must be True or False")
        cleanup_in_server = options.get("cleanup_in_server", False)
        if not isinstance(cleanup_in_server, bool):
            raise ConfigurationError("cleanup_in_server must be True or False")
        return cls(max_disconnection_duration=float(duration), skip_middlewares=skip,
                   max_replay_packets=cap, namespaces=namespaces,
                   lease_expiry=float(seconds["lease_expiry"]),
                   handover_timeout=float(seconds["handover_timeout"]),
                   write_through=write_through, history_cache_bytes=cache,
                   cleanup_in_server=cleanup_in_server)


def split_auth(data: Any) -> tuple[Any, object, object]:
    """The application's auth (pid and offset removed), the pid and the offset sent."""
    if not isinstance(data, dict) or ("pid" not in data and "offset" not in data):
        return data, None, None
    auth = {key: value for key, value in data.items() if key not in ("pid", "offset")}
    return auth, data.get("pid"), data.get("offset")


def check_offset(offset: object, epoch: str) -> RecoveryFailure | None:
    """What is wrong with an offset on its face, found before a session is claimed."""
    if offset is None:
        return None
    parsed = parse_offset(offset)
    if parsed is None:
        return RecoveryFailure.MALFORMED
    return RecoveryFailure.HISTORY_RESET if parsed[0] != epoch else None


def replay_start(session: Session, offset: object, epoch: str, top: int | None = None
                 ) -> tuple[int | None, RecoveryFailure | None]:
    """The seq after which the client is owed packets, or why it cannot be trusted.

    A client that holds the last packet sent to it is owed only what came after its
    socket went away; one that holds an older offset is owed everything after it; one
    with no offset at all never received a stored packet of this session.

    A session taken over from a live row (its node died or let go without saving it)
    says what was sent only as of its last write: the client's offset is trusted up to
    ``top``, the last seq committed, which no client can be ahead of.
    """
    if session.epoch != epoch:
        return None, RecoveryFailure.HISTORY_RESET
    if offset is None:
        if session.last_sent_seq is None:
            return session.position, None
        return resume_seq_of(session), None
    parsed = parse_offset(offset)
    if parsed is None:
        return None, RecoveryFailure.MALFORMED
    offset_epoch, seq = parsed
    if offset_epoch != epoch:
        return None, RecoveryFailure.HISTORY_RESET
    if session.expires_at >= LIVE_EXPIRY:
        if top is not None and seq > top:
            return None, RecoveryFailure.OFFSET_AHEAD
        return max(seq, session.start_seq), None
    sent = session.last_sent_seq
    if sent is not None and seq == sent:
        return session.position, None
    if seq > max(session.position, sent or 0):
        return None, RecoveryFailure.OFFSET_AHEAD
    return max(seq, session.start_seq), None


def resume_seq_of(session: Session) -> int:
    return session.start_seq if session.resume_seq is None else session.resume_seq


def next_resume_seq(session: Session, offset: object, start: int) -> int:
    """Where a later recovery without an offset starts, once this one is accepted.

    A client with an offset confirmed ``start``. One without confirmed nothing: what
    its previous connection was sent comes again in this replay, once; from then on it
    counts as received, or a client that keeps no offsets would be replayed everything
    since its first connect on every recovery. Offsets are still floored at
    ``start_seq`` only, so a replay cut short keeps its place.
    """
    if offset is None and session.last_sent_seq is not None:
        return max(resume_seq_of(session), session.last_sent_seq)
    return start


def check_window(start: int, bounds: HistoryBounds) -> RecoveryFailure | None:
    """Whether every packet after ``start`` is still retained. The cap counts what the
    socket is owed, found while reading (``_owed``), not the width of the window."""
    if start < bounds.purged_through:
        return RecoveryFailure.NOT_RETAINED
    return None
