"""The Redis Streams store."""

from .scripts import parse_url
from .store import RedisStore

__all__ = ["RedisStore", "parse_url"]
