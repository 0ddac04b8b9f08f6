"""Store URLs: one function maps a URL's scheme to its store class, imported lazily."""

from __future__ import annotations

import importlib

from ..exceptions import ConfigurationError
from .base import Store

# scheme -> (module, class, pip extra that brings its driver)
_STORES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("memory", "MemoryStore", None),
    "sqlite+aiosqlite": ("sql", "SQLStore", None),  # aiosqlite is a core dependency
    "postgresql+asyncpg": ("sql.postgres", "PostgresStore", "postgres"),
    "mongodb": ("mongo", "MongoStore", "mongo"),
    "mongodb+srv": ("mongo", "MongoStore", "mongo"),
    "redis": ("redis", "RedisStore", "redis"),
    "rediss": ("redis", "RedisStore", "redis"),
}

ACCEPTED_SCHEMES = tuple(_STORES)


def store_from_url(url: str) -> Store:
    """Build the store for ``url``; its scheme picks the backend.

    Accepted: ``memory://``, ``sqlite+aiosqlite:///path.db``,
    ``postgresql+asyncpg://user@host/db``, ``mongodb://...``, ``redis://...``.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"store must be a URL or a Store, got {url!r}; accepted schemes: "
            + ", ".join(f"{s}://" for s in ACCEPTED_SCHEMES)
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme not in _STORES:
        raise ConfigurationError(
            f"unknown store scheme {scheme!r}; accepted schemes: "
            + ", ".join(f"{s}://" for s in ACCEPTED_SCHEMES)
        )
    module_name, class_name, extra = _STORES[scheme]
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(__name__):
            raise ConfigurationError(f"the {scheme}:// store is not available yet") from exc
        hint = f" (pip install 'durable-adapter[{extra}]')" if extra else ""
        raise ConfigurationError(
            f"the {scheme}:// store needs the {exc.name} package{hint}"
        ) from exc
    store_class: type[Store] = getattr(module, class_name)
    return store_class(url)  # type: ignore[call-arg]


__all__ = ["ACCEPTED_SCHEMES", "Store", "store_from_url"]
