"""SIGINT/SIGTERM as a stop request, installed by the CLI only (never by the library).

Usage::

    stop = asyncio.Event()
    with on_stop(stop.set):
        await cleanup.run(url, stop_event=stop)

On leaving the block the handlers that were there before are put back.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def on_stop(callback: Callable[[], Any]) -> Iterator[None]:
    """Call ``callback()`` on the first SIGINT or SIGTERM while inside the block.

    Must run inside the event loop's thread. Where the loop cannot take signal
    handlers (Windows), nothing is installed and Ctrl+C raises KeyboardInterrupt.
    """
    loop = asyncio.get_running_loop()
    previous: dict[signal.Signals, Any] = {}
    requested = False

    def handle(signum: signal.Signals) -> None:
        nonlocal requested
        if requested:
            logger.info("already stopping (%s)", signum.name, extra={"action": "stop_again"})
            return
        requested = True
        logger.info("%s received: stopping after the current batch", signum.name,
                    extra={"action": "stop_requested"})
        callback()

    for signum in STOP_SIGNALS:
        try:
            previous[signum] = signal.getsignal(signum)
            loop.add_signal_handler(signum, handle, signum)
        except (NotImplementedError, RuntimeError, ValueError):
            previous.pop(signum, None)
    try:
        yield
    finally:
        for signum, old in previous.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
