"""``connection_state_recovery=`` takes the exported :class:`RecoveryOptions` as well as a
dict of its fields, True, and None/False, and validates each alike."""

from __future__ import annotations

from typing import Any

import pytest

import durable_adapter
from durable_adapter import RecoveryOptions


def server(option: Any) -> durable_adapter.AsyncServer:
    return durable_adapter.AsyncServer(store="memory://", connection_state_recovery=option)


def test_recovery_options_instance_is_used_as_given() -> None:
    options = RecoveryOptions(max_disconnection_duration=30, skip_middlewares=True,
                              namespaces=frozenset({"/chat"}))
    sio = server(options)
    assert sio.recovery == options
    assert sio.recovery is not None and sio.recovery.max_disconnection_duration == 30.0


def test_dict_and_options_give_the_same_settings() -> None:
    assert server({"max_disconnection_duration": 30}).recovery == \
        server(RecoveryOptions(max_disconnection_duration=30)).recovery


def test_true_means_every_default_and_false_or_none_turn_recovery_off() -> None:
    assert server(True).recovery == RecoveryOptions()
    assert server(False).recovery is None
    assert server(None).recovery is None


@pytest.mark.parametrize("options, message", [
    pytest.param(RecoveryOptions(max_disconnection_duration=-1),
                 "max_disconnection_duration must be a positive number", id="negative"),
    pytest.param(RecoveryOptions(lease_expiry=0), "lease_expiry must be a positive",
                 id="zero lease"),
    pytest.param("yes", "must be a dict, a RecoveryOptions, True, or None", id="a string"),
])
def test_bad_options_are_refused_whatever_their_form(options: Any, message: str) -> None:
    with pytest.raises(durable_adapter.ConfigurationError, match=message):
        server(options)
