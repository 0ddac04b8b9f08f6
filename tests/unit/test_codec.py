"""The codec of stored payloads with python-socketio's ``json=`` module."""

from __future__ import annotations

import base64
import datetime
import json
from types import SimpleNamespace
from typing import Any

import pytest
from engineio import json as engineio_json

from durable_adapter._codec import DEFAULT_CODEC, Codec
from durable_adapter.exceptions import SessionDataError


def _default(value: Any) -> Any:
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, bytes):  # a module that would make bytes text
        return base64.b64encode(value).decode()
    raise TypeError(type(value).__name__)


lenient_json = SimpleNamespace(
    dumps=lambda obj, **kwargs: json.dumps(obj, default=_default, **kwargs),
    loads=json.loads)


def test_the_module_encodes_what_the_standard_json_refuses() -> None:
    value = ["ev", {"on": datetime.date(2026, 12, 7)}]
    with pytest.raises(TypeError):
        DEFAULT_CODEC.encode(value)
    assert Codec(lenient_json).decode(Codec(lenient_json).encode(value)) == \
        ["ev", {"on": "2026-12-07"}]


def test_bytes_stay_binary_parts_whatever_the_module_does_with_them() -> None:
    """python-socketio lifts binary parts out before it calls ``dumps``: a replay must
    send them as attachments, as the live packet did, not as the module's text."""
    codec = Codec(lenient_json)
    assert codec.decode(codec.encode(["ev", {"blob": b"\x00\xff"}])) == \
        ["ev", {"blob": b"\x00\xff"}]


def test_session_data_is_checked_with_the_module() -> None:
    data = {"since": datetime.date(2026, 12, 7)}
    with pytest.raises(SessionDataError):
        DEFAULT_CODEC.check_session_data(data)
    Codec(lenient_json).check_session_data(data)
    assert Codec(lenient_json).copy(data) == {"since": "2026-12-07"}


def test_the_standard_module_takes_the_standard_path() -> None:
    assert Codec(json).json is None
    assert Codec(engineio_json).json is None  # python-socketio's default module
    assert Codec(lenient_json).json is lenient_json
