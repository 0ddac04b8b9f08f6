"""How packet payloads and session data become bytes for a store, and back.

Payloads are JSON with binary parts lifted out, as the Socket.IO parser does: each
``bytes`` becomes ``{"_placeholder": true, "num": i}`` and the parts are stored after
the JSON. One format for every store, so a packet reads back identically everywhere.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from .exceptions import SessionDataError

_PLACEHOLDER = "_placeholder"
_LENGTH = struct.Struct(">I")


def _lift_binary(value: Any, parts: list[bytes]) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        parts.append(bytes(value))
        return {_PLACEHOLDER: True, "num": len(parts) - 1}
    if isinstance(value, list | tuple):
        return [_lift_binary(item, parts) for item in value]
    if isinstance(value, dict):
        return {key: _lift_binary(item, parts) for key, item in value.items()}
    return value


def _restore_binary(value: Any, parts: list[bytes]) -> Any:
    if isinstance(value, dict):
        num = value.get("num")
        if value.get(_PLACEHOLDER) is True and isinstance(num, int) and len(value) == 2 \
                and 0 <= num < len(parts):
            return parts[num]
        return {key: _restore_binary(item, parts) for key, item in value.items()}
    if isinstance(value, list):
        return [_restore_binary(item, parts) for item in value]
    return value


def encode_value(value: Any) -> bytes:
    """``value`` (JSON types plus bytes anywhere) as bytes: JSON, then the binary parts."""
    parts: list[bytes] = []
    try:  # the common case has no bytes: skip the walk (json refuses bytes)
        head = json.dumps(value, separators=(",", ":")).encode()
    except TypeError:
        head = json.dumps(_lift_binary(value, parts), separators=(",", ":")).encode()
    chunks = [_LENGTH.pack(len(parts)), _LENGTH.pack(len(head)), head]
    for part in parts:
        chunks += [_LENGTH.pack(len(part)), part]
    return b"".join(chunks)


def decode_value(blob: bytes) -> Any:
    """The inverse of :func:`encode_value`."""
    view = memoryview(blob)
    (count,) = _LENGTH.unpack_from(view, 0)
    (head_len,) = _LENGTH.unpack_from(view, 4)
    pos = 8
    head = json.loads(bytes(view[pos : pos + head_len]))
    if count == 0:
        return head
    pos += head_len
    parts: list[bytes] = []
    for _ in range(count):
        (size,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        parts.append(bytes(view[pos : pos + size]))
        pos += size
    return _restore_binary(head, parts)


def check_session_data(data: Any) -> None:
    """Raise :class:`SessionDataError` when a socket's session cannot be stored."""
    try:
        encode_value(data)
    except (TypeError, ValueError) as exc:
        raise SessionDataError(
            f"the socket session must hold JSON values and bytes only: {exc}"
        ) from exc


def copy_value(value: Any) -> Any:
    """An independent copy of session data, as a store would hand it back.

    Through the codec rather than ``copy.deepcopy``: data nested deeper than Python's
    recursion limit allows for deepcopy is still storable (as the SQL stores show).
    """
    return decode_value(encode_value(value))
