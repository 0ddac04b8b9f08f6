"""How packet payloads and session data become bytes for a store, and back.

Payloads are JSON with binary parts lifted out, as the Socket.IO parser does: each
``bytes`` becomes ``{"_placeholder": true, "num": i}`` and the parts are stored after
the JSON. One format for every store, so a packet reads back identically everywhere.
"""

from __future__ import annotations

import json
import json.encoder
import struct
import threading
from collections.abc import Callable
from typing import Any

from .exceptions import SessionDataError

_PLACEHOLDER = "_placeholder"
_LENGTH = struct.Struct(">I")
_NO_PARTS = _LENGTH.pack(0)


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


_COMPACT = json.JSONEncoder(separators=(",", ":"))
_local = threading.local()  # each thread's encoder: its circular-reference marks are its own


def _new_encoder() -> Callable[[Any, int], Any] | None:
    """The C encoder ``json.dumps(value, separators=(",", ":"))`` builds on every call,
    built once (per thread) instead: that build is most of the cost of a small payload."""
    make = getattr(json.encoder, "c_make_encoder", None)  # not in the stubs
    if make is None:  # no C accelerator (another interpreter): json.dumps then
        return None
    try:
        encoder: Callable[[Any, int], Any] = make(
            {}, _COMPACT.default, json.encoder.encode_basestring_ascii, None,
            _COMPACT.key_separator, _COMPACT.item_separator, False, False, True)
        if "".join(encoder(["a", {"b": 1.5}], 0)) != '["a",{"b":1.5}]':
            return None
    except TypeError:  # a signature this code does not know
        return None
    return encoder


def _compact_json(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"))``, the same text, faster."""
    try:
        encoder: Callable[[Any, int], Any] | None = _local.encoder
    except AttributeError:  # this thread's first call, or the last one failed
        encoder = _local.encoder = _new_encoder()
    if encoder is None:
        return json.dumps(value, separators=(",", ":"))
    try:
        return "".join(encoder(value, 0))
    except BaseException:
        del _local.encoder  # a failure can leave circular-reference marks behind
        raise


def encode_value(value: Any) -> bytes:
    """``value`` (JSON types plus bytes anywhere) as bytes: JSON, then the binary parts."""
    parts: list[bytes] = []
    try:  # the common case has no bytes: skip the walk (json refuses bytes)
        head = _compact_json(value).encode()
    except TypeError:
        head = _compact_json(_lift_binary(value, parts)).encode()
    if not parts:
        return _NO_PARTS + _LENGTH.pack(len(head)) + head
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
