"""A pid never reaches the logs, with every logger on DEBUG (issue 14, item 4f).

python-engineio logs each packet it sends or receives; the CONNECT packets carry the
pid, a bearer credential. The records must still be emitted, with the pid redacted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

import durable_adapter
from durable_adapter._redact import REDACTED, redact
from tests._harness import WAIT, Inbox, drop_transport, serving

LOGGERS = ("", "socketio", "engineio", "durable_adapter", "socketio.server",
           "engineio.server", "socketio.client", "engineio.client", "aiohttp")


class Capture(logging.Handler):
    """Every record any logger emits: its logger name, formatted text and raw args."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, f"{self.format(record)} {record.args!r}"))


@pytest.fixture
def captured() -> Iterator[Capture]:
    handler = Capture()
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _client() -> tuple[durable_adapter.AsyncClient, Inbox]:
    client = durable_adapter.AsyncClient(reconnection=False, logger=True, engineio_logger=True)
    inbox = Inbox()
    client.on("tick", inbox.put)
    return client, inbox


async def _gone(sio: durable_adapter.AsyncServer, sid: str) -> None:
    deadline = time.monotonic() + WAIT
    while sio.manager.is_connected(sid, "/"):
        assert time.monotonic() < deadline, f"{sid} still connected"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_pids_are_redacted_from_every_log_record(
        captured: Capture, transport: str) -> None:
    # short pings: a dropped long-poll client is noticed in about a second
    sio = durable_adapter.AsyncServer(store="memory://", async_mode="aiohttp", logger=True,
                                      engineio_logger=True, ping_interval=0.5, ping_timeout=1)
    async with serving(sio) as url:
        client, inbox = _client()
        await client.connect(url, transports=[transport], wait_timeout=WAIT)
        await sio.emit("tick", 1)
        await inbox.wait_for(1)
        sid, state = client.get_sid("/"), client.recovery_state()
        await drop_transport(client)
        await _gone(sio, sid)
        await client.eio.disconnect(abort=True)

        again, inbox = _client()
        again.load_recovery_state(state)
        await again.connect(url, transports=[transport], wait_timeout=WAIT)
        assert again.is_recovered() and again.get_sid("/") == sid
        await again.disconnect()

    pid = state["/"]["pid"]
    assert pid is not None
    leaks = [text for _, text in captured.records if pid in text]
    assert leaks == []
    # the packet records are still emitted, redacted: the pid going out and coming back
    for name in ("engineio.server", "engineio.client"):
        for direction in ("Sending packet", "Received packet"):
            assert any(logger == name and direction in text and f'"pid":"{REDACTED}"' in text
                       for logger, text in captured.records), (name, direction)


@pytest.mark.parametrize("text", [
    '0{"pid":"abc","offset":"e-1"}',
    '0/chat,{"sid":"s","pid":"a\\"b"}',
    "{'pid': 'abc'}",
    '{"pid" : "abc"}',
])
def test_redact_replaces_the_pid_value_only(text: str) -> None:
    clean = redact(text)
    assert "abc" not in clean and 'a\\"b' not in clean and REDACTED in clean
    assert clean.replace(REDACTED, "") != clean


def test_redact_leaves_other_text_alone() -> None:
    text: Any = '2["tick","pid is a word",{"pids":"x"}]'
    assert redact(text) == text
