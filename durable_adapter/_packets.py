"""Socket.IO EVENT packets as sent: the one place they are built and encoded.

The manager sends with it. Every emit that stores (the manager's, the emitters' in
:mod:`.emitter` and :mod:`.transactional`) encodes through it once first, so a payload
python-socketio cannot send (nested too deep, say) fails its own emit instead of
entering the history that every node and every replay reads. All three read an emit's
arguments here too, as python-socketio does (:func:`as_args`, :func:`as_rooms`).
"""

from __future__ import annotations

from typing import Any

from engineio import packet as eio_packet
from socketio import packet as sio_packet

#: an offset's shape: a stored packet goes out with its offset as the last argument
OFFSET_SHAPE = "0" * 16 + "-1"
#: how a JSON-encoded stored packet ends: its offset, the last argument
_OFFSET_TAIL = f'"{OFFSET_SHAPE}"]'


def as_args(data: Any) -> list[Any]:
    """An emit's ``data`` as its arguments, by python-socketio's rule: a tuple is several
    arguments, None is none, anything else is one."""
    if isinstance(data, tuple):
        return list(data)
    return [] if data is None else [data]


def as_rooms(rooms: Any) -> tuple[str, ...]:
    """An emit's ``to``/``room``/``skip_sid``: one room or sid, several, or None for none."""
    if rooms is None:
        return ()
    if isinstance(rooms, str):
        return (rooms,)
    return tuple(r for r in rooms if r is not None)


def encode_event(packet_class: type[sio_packet.Packet], namespace: str, data: list[Any],
                 ack_id: int | None = None) -> list[eio_packet.Packet]:
    """``data`` (``[event, *args]``) as the engine.io MESSAGE packets that carry it."""
    pkt = packet_class(sio_packet.EVENT, namespace=namespace, data=data, id=ack_id)
    encoded = pkt.encode()
    parts = encoded if isinstance(encoded, list) else [encoded]
    return [eio_packet.Packet(eio_packet.MESSAGE, part) for part in parts]


def packet_class_for(json: Any) -> Any:
    """python-socketio's packet class, encoding with ``json`` (python-socketio's
    ``json=`` module) if given, without changing the process-wide class as a server
    does: an emitter checks what the servers could send."""
    if json is None:
        return sio_packet.Packet
    return type("Packet", (sio_packet.Packet,), {"json": json})


def check_sendable(namespace: str, data: list[Any],
                   packet_class: type[sio_packet.Packet] = sio_packet.Packet) -> None:
    """Raise what python-socketio raises when it cannot send ``data`` as a stored packet."""
    encode_event(packet_class, namespace, [*data, OFFSET_SHAPE])


def encode_with_offset(packet_class: type[sio_packet.Packet], namespace: str,
                       data: list[Any]) -> list[eio_packet.Packet] | None:
    """``data`` encoded as a stored packet, its offset still a placeholder for
    :func:`set_offset`; None when the placeholder cannot be put in place afterwards (a
    packet class other than python-socketio's JSON one). Raises what python-socketio
    raises when it cannot send ``data``: the check every stored emit makes first."""
    parts = encode_event(packet_class, namespace, [*data, OFFSET_SHAPE])
    text = parts[0].data
    if packet_class is not sio_packet.Packet or not isinstance(text, str) \
            or not text.endswith(_OFFSET_TAIL):
        return None
    return parts


def set_offset(parts: list[eio_packet.Packet], offset: str) -> list[eio_packet.Packet]:
    """Frames from :func:`encode_with_offset` with the real offset in place of the
    placeholder: the JSON text ends with it (attachments follow in their own frames)."""
    text = parts[0].data
    first = eio_packet.Packet(eio_packet.MESSAGE, f'{text[:-len(_OFFSET_TAIL)]}"{offset}"]')
    return [first, *parts[1:]]
