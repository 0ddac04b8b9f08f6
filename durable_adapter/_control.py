"""The control protocol: every message that nodes and emitters send each other through the
store, spelled once.

A store carries a :class:`~.stores.base.ControlMessage` (a method name, the sending node,
an optional target node and a body of JSON-able values) without reading it. What the
methods are and what each body holds is said here, by one class per method; the cluster
layer of the servers (:mod:`._cluster`) and the emitters (:mod:`.emitter`) build and read
messages only through them, so the two cannot drift apart.

Emit arguments travel packed (:func:`pack`): the codec of the stored packets (with the
server's JSON module), in base64, so bytes and nested values come back as they went, in
every store.

Usage::

    message = to_message(EnterRoom(sid=sid, namespace="/", room="r"), origin=node_id)
    command = COMMANDS[message.method].from_body(message.body)
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

from ._codec import DEFAULT_CODEC, Codec
from .stores.base import ControlMessage


def pack(data: Any, codec: Codec = DEFAULT_CODEC) -> str:
    """``data`` as a body value: the stored packets' codec, in base64."""
    return base64.b64encode(codec.encode(data)).decode()


def unpack(text: str, codec: Codec = DEFAULT_CODEC) -> Any:
    """The inverse of :func:`pack`."""
    return codec.decode(base64.b64decode(text))


@dataclass(frozen=True, kw_only=True)
class _Command:
    #: the message's method name on the wire
    method: ClassVar[str]

    def body(self, codec: Codec = DEFAULT_CODEC) -> dict[str, Any]:
        """The message body: each field by its name (``codec`` packs emit arguments)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_body(cls, body: Mapping[str, Any], codec: Codec = DEFAULT_CODEC) -> Self:
        """The inverse of :meth:`body`; a missing or unknown key raises TypeError."""
        return cls(**body)


@dataclass(frozen=True, kw_only=True)
class Disconnect(_Command):
    """Disconnect ``sid`` on the node where it is connected."""

    method: ClassVar[str] = "disconnect"
    sid: str
    namespace: str


@dataclass(frozen=True, kw_only=True)
class EnterRoom(_Command):
    """Put the connected socket ``sid`` in ``room``, on the node that holds it."""

    method: ClassVar[str] = "enter_room"
    sid: str
    namespace: str
    room: str


@dataclass(frozen=True, kw_only=True)
class LeaveRoom(_Command):
    """Take the connected socket ``sid`` out of ``room``, on the node that holds it."""

    method: ClassVar[str] = "leave_room"
    sid: str
    namespace: str
    room: str


@dataclass(frozen=True, kw_only=True)
class CloseRoom(_Command):
    """Take every socket out of ``room``, on every node."""

    method: ClassVar[str] = "close_room"
    room: str
    namespace: str


@dataclass(frozen=True, kw_only=True)
class _RoomWide(_Command):
    """A command on every socket of ``namespace`` in any of ``rooms`` (empty: every
    socket of it), on every node: the JS emitters' ``io.in(rooms)...``."""

    namespace: str
    rooms: tuple[str, ...] = ()

    def body(self, codec: Codec = DEFAULT_CODEC) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in super().body(codec).items()}

    @classmethod
    def from_body(cls, body: Mapping[str, Any], codec: Codec = DEFAULT_CODEC) -> Self:
        # JSON has no tuples: room lists come back as lists
        fields_: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value
                                   for key, value in body.items()}
        return cls(**fields_)


@dataclass(frozen=True, kw_only=True)
class SocketsJoin(_RoomWide):
    """Put every matching connected socket in each room of ``join``."""

    method: ClassVar[str] = "sockets_join"
    join: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class SocketsLeave(_RoomWide):
    """Take every matching connected socket out of each room of ``leave``."""

    method: ClassVar[str] = "sockets_leave"
    leave: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class DisconnectSockets(_RoomWide):
    """Disconnect every matching connected socket (a server-side disconnect); ``close``:
    close its client's whole connection."""

    method: ClassVar[str] = "disconnect_sockets"
    close: bool = False


@dataclass(frozen=True, kw_only=True)
class EmitLive(_Command):
    """A live emit (volatile, with an ack, or in a namespace without recovery) for every
    node's matching sockets; with ``callback_id``, acks go back to the sending node as
    :class:`Callback` messages."""

    method: ClassVar[str] = "emit_live"
    namespace: str
    event: str
    args: list[Any]
    rooms: tuple[str, ...] = ()
    except_rooms: tuple[str, ...] = ()
    callback_id: str | None = None

    def body(self, codec: Codec = DEFAULT_CODEC) -> dict[str, Any]:
        return {"namespace": self.namespace, "event": self.event,
                "args": pack(self.args, codec),
                "rooms": list(self.rooms), "except_rooms": list(self.except_rooms),
                "callback_id": self.callback_id}

    @classmethod
    def from_body(cls, body: Mapping[str, Any], codec: Codec = DEFAULT_CODEC) -> Self:
        return cls(namespace=body["namespace"], event=body["event"],
                   args=unpack(body["args"], codec), rooms=tuple(body["rooms"]),
                   except_rooms=tuple(body["except_rooms"]), callback_id=body["callback_id"])


@dataclass(frozen=True, kw_only=True)
class Handover(_Command):
    """Sent to the node holding a live session: close its socket and save the session as
    dropped, then answer with :class:`HandoverDone`."""

    method: ClassVar[str] = "handover"
    namespace: str
    pid_hash: str
    request_id: str


@dataclass(frozen=True, kw_only=True)
class HandoverDone(_Command):
    """The answer to :class:`Handover` ``request_id``, sent to the node that asked."""

    method: ClassVar[str] = "handover_done"
    request_id: str


@dataclass(frozen=True, kw_only=True)
class Callback(_Command):
    """A client's ack of an :class:`EmitLive`, sent to the node that emitted it."""

    method: ClassVar[str] = "callback"
    callback_id: str
    args: list[Any]

    def body(self, codec: Codec = DEFAULT_CODEC) -> dict[str, Any]:
        return {"callback_id": self.callback_id, "args": pack(self.args, codec)}

    @classmethod
    def from_body(cls, body: Mapping[str, Any], codec: Codec = DEFAULT_CODEC) -> Self:
        return cls(callback_id=body["callback_id"], args=unpack(body["args"], codec))


Command = (Disconnect | EnterRoom | LeaveRoom | CloseRoom | SocketsJoin | SocketsLeave
           | DisconnectSockets | EmitLive | Handover | HandoverDone | Callback)

#: method name -> its class
COMMANDS: Mapping[str, type[Command]] = {kind.method: kind for kind in (
    Disconnect, EnterRoom, LeaveRoom, CloseRoom, SocketsJoin, SocketsLeave,
    DisconnectSockets, EmitLive, Handover, HandoverDone, Callback)}


def to_message(command: Command, *, origin: str, target: str | None = None,
               codec: Codec = DEFAULT_CODEC) -> ControlMessage:
    """``command`` as sent by ``origin``: to every other node, or to ``target`` alone;
    ``codec``: the store's, which packs emit arguments."""
    return ControlMessage(method=command.method, origin=origin, target=target,
                          body=command.body(codec))
