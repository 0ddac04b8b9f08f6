"""Keep private ids out of the logs.

A pid is a bearer credential: whoever holds it can take over the session. python-engineio
logs every packet it sends or receives (``Sending packet MESSAGE data 0{"sid":...,
"pid":...}`` once ``engineio_logger=True``), so the CONNECT packets that carry pids would
reach the logs whole. A filter on the loggers the server and client actually use
rewrites such records before any handler sees them; the record is still emitted, with
``"pid":"<redacted>"``. It matches the field in the text, not a log call, so it holds
whichever python-socketio/python-engineio release produced the line.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "<redacted>"

# "pid": "..." (JSON, as on the wire) or 'pid': '...' (a Python repr), escapes included
_PID_FIELD = re.compile(
    r"""(?P<key>(?P<q>["'])pid(?P=q)\s*:\s*)(?P<v>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


def _redacted_value(match: re.Match[str]) -> str:
    quote = match["v"][0]
    return f"{match['key']}{quote}{REDACTED}{quote}"


def redact(text: str) -> str:
    return _PID_FIELD.sub(_redacted_value, text) if "pid" in text else text


class PidRedactor(logging.Filter):
    """Rewrites a record whose message holds a pid field; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the handler's to report, as it was
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def redact_pids(logger: Any) -> None:
    """Install the redactor on ``logger`` (a Logger or LoggerAdapter) once."""
    if isinstance(logger, logging.LoggerAdapter):
        logger = logger.logger
    if isinstance(logger, logging.Filterer) and \
            not any(isinstance(f, PidRedactor) for f in logger.filters):
        logger.addFilter(PidRedactor())
