"""The control protocol (:mod:`durable_adapter._control`): what goes on the wire for each
method, and that a node reads back what a node or an emitter sent.

The bodies are pinned as they were before the protocol had a module of its own: nodes of
the previous release and of this one share a store during a rolling upgrade.
"""

from __future__ import annotations

from typing import Any

import pytest

from durable_adapter import _control as control
from durable_adapter.stores.base import ControlMessage

ARGS: list[Any] = [{"a": 1}, b"\x00\xff", [None, True, 1.5, "é"]]

WIRE: list[tuple[control.Command, str, dict[str, Any]]] = [
    (control.Disconnect(sid="s", namespace="/"), "disconnect",
     {"sid": "s", "namespace": "/"}),
    (control.EnterRoom(sid="s", namespace="/", room="r"), "enter_room",
     {"sid": "s", "namespace": "/", "room": "r"}),
    (control.LeaveRoom(sid="s", namespace="/", room="r"), "leave_room",
     {"sid": "s", "namespace": "/", "room": "r"}),
    (control.CloseRoom(room="r", namespace="/chat"), "close_room",
     {"room": "r", "namespace": "/chat"}),
    (control.SocketsJoin(namespace="/", rooms=("vip",), join=("x", "y")), "sockets_join",
     {"namespace": "/", "rooms": ["vip"], "join": ["x", "y"]}),
    (control.SocketsLeave(namespace="/chat", leave=("x",)), "sockets_leave",
     {"namespace": "/chat", "rooms": [], "leave": ["x"]}),
    (control.DisconnectSockets(namespace="/", rooms=("a", "b"), close=True),
     "disconnect_sockets", {"namespace": "/", "rooms": ["a", "b"], "close": True}),
    (control.EmitLive(namespace="/", event="e", args=ARGS, rooms=("a", "b"),
                      except_rooms=("c",), callback_id="cb"), "emit_live",
     {"namespace": "/", "event": "e", "args": control.pack(ARGS), "rooms": ["a", "b"],
      "except_rooms": ["c"], "callback_id": "cb"}),
    (control.Handover(namespace="/", pid_hash="h", request_id="q"), "handover",
     {"namespace": "/", "pid_hash": "h", "request_id": "q"}),
    (control.HandoverDone(request_id="q"), "handover_done", {"request_id": "q"}),
    (control.Callback(callback_id="cb", args=ARGS), "callback",
     {"callback_id": "cb", "args": control.pack(ARGS)}),
]


def test_every_method_has_its_class() -> None:
    assert sorted(control.COMMANDS) == sorted(method for _, method, _ in WIRE)


@pytest.mark.parametrize(("command", "method", "body"), WIRE, ids=[m for _, m, _ in WIRE])
def test_the_wire_form_and_back(command: control.Command, method: str,
                                body: dict[str, Any]) -> None:
    message = control.to_message(command, origin="n1", target="n2")
    assert message == ControlMessage(method=method, origin="n1", target="n2", body=body)
    assert control.COMMANDS[method].from_body(message.body) == command


def test_packed_arguments_come_back_as_they_went() -> None:
    assert control.unpack(control.pack(ARGS)) == ARGS


def test_a_body_with_a_missing_or_unknown_key_is_refused() -> None:
    with pytest.raises(TypeError):
        control.Disconnect.from_body({"sid": "s"})
    with pytest.raises(TypeError):
        control.Disconnect.from_body({"sid": "s", "namespace": "/", "extra": 1})
    with pytest.raises(KeyError):
        control.EmitLive.from_body({"namespace": "/"})
