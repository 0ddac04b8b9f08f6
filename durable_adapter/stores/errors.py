"""Driver errors become :class:`StoreError`: callers handle one error type for every store."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..exceptions import StoreError


@contextlib.contextmanager
def driver_errors(message: str, *errors: type[BaseException]) -> Iterator[None]:
    """Re-raise ``errors`` (the driver's) as :class:`StoreError` with ``message``, keeping
    the driver error as the cause.

    Works around ``await`` too (``with driver_errors(...): await query()``).
    """
    try:
        yield
    except errors as exc:
        raise StoreError(f"{message}: {exc}") from exc
