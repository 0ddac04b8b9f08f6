"""What a hung test was waiting for: the stack of every pending asyncio task.

pytest-timeout shows only the main thread, which for an async test is the event loop
sitting in ``select``. A few seconds before the timeout this prints each task's stack
(to stderr, which pytest shows with the failure), so a hang in CI names its await.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator

MARGIN = 5.0  # seconds before pytest-timeout fires


def _pending_tasks() -> list[asyncio.Task[object]]:
    for _ in range(5):  # the set may change while the loop runs: try again
        try:
            return [task for task in list(asyncio.tasks._all_tasks)  # type: ignore[attr-defined]
                    if not task.done()]
        except RuntimeError:
            continue
    return []


def _await_chain(awaitable: object) -> list[str]:
    """Where each coroutine of the chain a task waits on stands (file:line function)."""
    lines: list[str] = []
    while awaitable is not None and len(lines) < 40:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None) \
            or getattr(awaitable, "ag_frame", None)
        if frame is None:
            lines.append(repr(awaitable)[:200])  # a future or task: the end of the chain
            break
        code = frame.f_code
        lines.append(f"{code.co_filename}:{frame.f_lineno} {code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) \
            or getattr(awaitable, "gi_yieldfrom", None) or getattr(awaitable, "ag_await", None)
    return lines


def _report(name: str) -> None:
    tasks = _pending_tasks()
    print(f"\n--- {name} is about to time out; {len(tasks)} pending asyncio tasks ---",
          file=sys.stderr)
    for task in tasks:
        try:
            print(f"{task.get_name()}:", file=sys.stderr)
            for line in _await_chain(task.get_coro()):
                print(f"    {line}", file=sys.stderr)
        except Exception as exc:  # a frame that changed under us: report what we can
            print(f"{task!r}: {exc}", file=sys.stderr)
    sys.stderr.flush()


def watch(name: str, timeout: float) -> Iterator[None]:
    """Report pending tasks if the test still runs ``MARGIN`` s before ``timeout``."""
    timer = threading.Timer(max(timeout - MARGIN, 1.0), _report, args=(name,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
