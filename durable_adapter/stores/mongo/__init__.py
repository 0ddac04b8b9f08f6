"""The MongoDB store (change streams and a capped collection)."""

from .store import MongoStore, ensure_schema

__all__ = ["MongoStore", "ensure_schema"]
