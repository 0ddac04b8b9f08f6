"""How packet payloads and session data become bytes for a store, and back.

Payloads are JSON with binary parts lifted out, as the Socket.IO parser does: each
``bytes`` becomes ``{"_placeholder": true, "num": i}`` and the parts are stored after
the JSON. One format for every store, so a packet reads back identically everywhere.

The JSON is the server's: python-socketio's ``json=`` option (``AsyncServer(json=mod)``)
names a module whose ``dumps``/``loads`` encode every packet, and a :class:`Codec` built
on it stores with the same module. A payload such a module can send (a ``datetime`` its
``dumps`` turns into text) can then be stored, and reads back as its ``loads`` returns
it: re-encoded for a replay, it is the same text the live packet carried.
"""

from __future__ import annotations

import json as _json
import struct
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol

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


_COMPACT = _json.JSONEncoder(separators=(",", ":"))
_local = threading.local()  # each thread's encoder: its circular-reference marks are its own


def _new_encoder() -> Callable[[Any, int], Any] | None:
    """The C encoder ``json.dumps(value, separators=(",", ":"))`` builds on every call,
    built once (per thread) instead: that build is most of the cost of a small payload."""
    make = getattr(_json.encoder, "c_make_encoder", None)  # not in the stubs
    if make is None:  # no C accelerator (another interpreter): json.dumps then
        return None
    try:
        encoder: Callable[[Any, int], Any] = make(
            {}, _COMPACT.default, _json.encoder.encode_basestring_ascii, None,
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
        return _json.dumps(value, separators=(",", ":"))
    try:
        return "".join(encoder(value, 0))
    except BaseException:
        del _local.encoder  # a failure can leave circular-reference marks behind
        raise


def _has_binary(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    if isinstance(value, list | tuple):
        return any(_has_binary(item) for item in value)
    if isinstance(value, dict):
        return any(_has_binary(item) for item in value.values())
    return False


def _frame(head: bytes, parts: list[bytes]) -> bytes:
    if not parts:
        return _NO_PARTS + _LENGTH.pack(len(head)) + head
    chunks = [_LENGTH.pack(len(parts)), _LENGTH.pack(len(head)), head]
    for part in parts:
        chunks += [_LENGTH.pack(len(part)), part]
    return b"".join(chunks)


def _unframe(blob: bytes, loads: Callable[[str], Any]) -> Any:
    view = memoryview(blob)
    (count,) = _LENGTH.unpack_from(view, 0)
    (head_len,) = _LENGTH.unpack_from(view, 4)
    pos = 8
    head = loads(bytes(view[pos : pos + head_len]).decode())
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


class JsonModule(Protocol):
    """What python-socketio asks of a ``json=`` module: ``dumps`` taking
    ``separators=`` and ``loads`` of a str."""

    def dumps(self, obj: Any, *, separators: tuple[str, str]) -> str: ...

    def loads(self, s: str) -> Any: ...


class Codec:
    """Packet payloads and session data as bytes, through one JSON module.

    :param json: python-socketio's ``json=`` module (anything with ``dumps`` and
        ``loads``); None, or a module whose ``dumps`` is the standard library's, takes
        the fast path of the standard ``json``.

    Binary parts are lifted out before the JSON is written, as python-socketio does
    before it calls ``json.dumps``: a module whose ``dumps`` would also turn bytes into
    text still stores them as binary, so a replay sends them as the live packet did.
    """

    def __init__(self, json: JsonModule | ModuleType | None = None) -> None:
        standard = json is None or getattr(json, "dumps", None) is _json.dumps
        #: the custom module, None for the standard library's
        self.json: Any = None if standard else json

    def encode(self, value: Any) -> bytes:
        """``value`` (what the JSON module takes, plus bytes anywhere) as bytes."""
        parts: list[bytes] = []
        if self.json is None:
            try:  # the common case has no bytes: skip the walk (json refuses bytes)
                head = _compact_json(value)
            except TypeError:
                head = _compact_json(_lift_binary(value, parts))
        else:
            if _has_binary(value):
                value = _lift_binary(value, parts)
            head = self.json.dumps(value, separators=(",", ":"))
        if isinstance(head, bytes):  # a module that writes bytes (orjson-like)
            return _frame(head, parts)
        return _frame(head.encode(), parts)

    def decode(self, blob: bytes) -> Any:
        """The inverse of :meth:`encode`."""
        return _unframe(blob, _json.loads if self.json is None else self.json.loads)

    def check_session_data(self, data: Any) -> None:
        """Raise :class:`SessionDataError` when a socket's session cannot be stored."""
        try:
            self.encode(data)
        except (TypeError, ValueError) as exc:
            raise SessionDataError(
                "the socket session must hold what the server's JSON module encodes, "
                f"and bytes: {exc}") from exc

    def copy(self, value: Any) -> Any:
        """An independent copy of session data, as a store would hand it back.

        Through the codec rather than ``copy.deepcopy``: data nested deeper than
        Python's recursion limit allows for deepcopy is still storable (as the SQL
        stores show), and a value the JSON module turns into text comes back as text
        here too, as from every other store.
        """
        return self.decode(self.encode(value))


#: the standard library's JSON: control messages, and every store no server configured
DEFAULT_CODEC = Codec()
encode_value = DEFAULT_CODEC.encode
decode_value = DEFAULT_CODEC.decode
check_session_data = DEFAULT_CODEC.check_session_data
copy_value = DEFAULT_CODEC.copy
