"""Store URLs as users have them (``DATABASE_URL``), mapped to the drivers we use.

One function, :func:`normalize_store_url`, used by everything that takes a store URL:
the server, the CLI, the emitters, the cleanup worker and the migrations. The scheme
changes (and PostgreSQL's ``sslmode`` query parameter its name); the rest of the URL is
kept byte for byte. No SQLAlchemy import here:
building a Redis store must not load it.
"""

from __future__ import annotations

from ..exceptions import ConfigurationError

POSTGRES = "postgresql+asyncpg"
SQLITE = "sqlite+aiosqlite"

#: scheme as written (lower case) -> the scheme the stores use
_SCHEMES: dict[str, str] = {
    "memory": "memory",
    "sqlite": SQLITE,  # SQLAlchemy's sync default (pysqlite)
    "sqlite+pysqlite": SQLITE,
    SQLITE: SQLITE,
    "postgres": POSTGRES,  # Heroku, Render, Fly and libpq write it this way
    "postgresql": POSTGRES,
    "postgresql+psycopg2": POSTGRES,
    "postgresql+psycopg": POSTGRES,
    "postgresql+psycopg_async": POSTGRES,
    "postgresql+pg8000": POSTGRES,
    POSTGRES: POSTGRES,
    "mongodb": "mongodb",
    "mongodb+srv": "mongodb+srv",
    "redis": "redis",
    "rediss": "rediss",
}

#: what error messages list as accepted
ACCEPTED_FORMS = ("memory://", "sqlite:///path.db", "sqlite+aiosqlite:///path.db",
                  "postgres://user@host/db", "postgresql://...", "postgresql+asyncpg://...",
                  "postgresql+psycopg2://...", "mongodb://...", "mongodb+srv://...",
                  "redis://...", "rediss://...")


def _refused(what: str) -> ConfigurationError:
    return ConfigurationError(f"{what}; accepted store URLs: {', '.join(ACCEPTED_FORMS)}")


def normalize_store_url(url: str) -> str:
    """``url`` with its scheme mapped to the driver its store uses.

    ``postgres://``, ``postgresql://`` and the other drivers' ``postgresql+...://`` become
    ``postgresql+asyncpg://`` (and libpq's ``sslmode=`` asyncpg's ``ssl=``);
    ``sqlite://`` becomes ``sqlite+aiosqlite://``; the other accepted schemes are only
    lower-cased.

    :raises ConfigurationError: (a ``ValueError``) not a URL, or an unknown scheme; the
        message lists the accepted forms.

    Example::

        normalize_store_url("postgres://app@db/app")  # 'postgresql+asyncpg://app@db/app'
    """
    if not isinstance(url, str) or "://" not in url:
        raise _refused(f"a store URL is needed, got {url!r}")
    scheme, rest = url.split("://", 1)
    mapped = _SCHEMES.get(scheme.lower())
    if mapped is None:
        raise _refused(f"unknown store scheme {scheme + '://'!r}")
    if mapped == POSTGRES:
        rest = _libpq_query(rest)
    return f"{mapped}://{rest}"


def _libpq_query(rest: str) -> str:
    """libpq's ``sslmode=`` (in most hosted database URLs) as asyncpg's ``ssl=``,
    which takes the same values; asyncpg refuses ``sslmode``."""
    location, sep, query = rest.partition("?")
    if not sep:
        return rest
    params = query.split("&")
    if any(param.startswith("ssl=") for param in params):
        return rest
    return location + "?" + "&".join(
        "ssl=" + param.removeprefix("sslmode=") if param.startswith("sslmode=") else param
        for param in params)


def store_scheme(url: str) -> str:
    """The scheme of ``url`` once normalised (``postgresql+asyncpg``, ``redis``, ...)."""
    return normalize_store_url(url).split("://", 1)[0]
