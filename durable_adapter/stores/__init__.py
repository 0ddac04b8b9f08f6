"""Store URLs: one function maps a URL's scheme to its store class, imported lazily."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..exceptions import ConfigurationError
from .base import Store
from .urls import normalize_store_url

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

    Accepted: ``memory://``, ``sqlite:///path.db``, ``postgres://user@host/db`` (or
    ``postgresql://``), ``mongodb://...``, ``redis://...``; SQL URLs get the async driver
    (:func:`~.urls.normalize_store_url`).
    """
    url = normalize_store_url(url)
    return _store_class(url)(url)  # type: ignore[call-arg]


def existing_store(url: str, *, schema: str | None = None) -> Store:
    """The (unopened) store at ``url`` as it is, for tools beside the servers (the
    cleanup worker, ``durable-adapter check``): a SQL store never migrates, and a SQLite
    file must exist already (opening would create an empty one).

    :param schema: the PostgreSQL schema of the tables, if not the default.
    """
    url = normalize_store_url(url)
    store_class = _store_class(url)
    if not _STORES[_scheme(url)][0].startswith("sql"):
        return store_class(url)  # type: ignore[call-arg]
    from .sql.dialect import is_sqlite, parse_url

    parsed = parse_url(url)
    if is_sqlite(parsed):
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigurationError("an in-memory SQLite database lives inside one process; "
                                     "give the database file's path")
        if not Path(parsed.database).is_file():
            raise ConfigurationError(
                f"no SQLite database at {parsed.database}; start a server on it or run "
                f"`durable-adapter migrate --store {url}` first")
    return store_class(url, schema=schema, auto_migrate=False)  # type: ignore[call-arg]


def _scheme(url: str) -> str:
    return url.split("://", 1)[0]


def _store_class(url: str) -> type[Store]:
    """The store class for the normalised ``url``, imported now; a missing driver is a
    :class:`ConfigurationError` naming the extra that brings it."""
    scheme = _scheme(url)
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
    return store_class


__all__ = ["ACCEPTED_SCHEMES", "Store", "existing_store", "normalize_store_url",
           "store_from_url"]
