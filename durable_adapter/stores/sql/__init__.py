"""SQL stores through SQLAlchemy: SQLite (embedded default), PostgreSQL (:mod:`.postgres`)."""

from .store import SQLStore

__all__ = ["SQLStore"]
