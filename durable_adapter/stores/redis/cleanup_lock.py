"""The "one active cleanup per store" lock on Redis: a key holding the holder's token.

Taken with ``SET NX PX``, renewed at each :meth:`RedisLock.check` (every pass), given up
by its holder only (a script compares the token). A holder that dies loses it when the
TTL runs out; a standby takes it on its next try. Two purges overlapping for a moment
(a pass that outlived the TTL) do no harm: trimming a stream is idempotent.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ...exceptions import StoreError

LOCK_TTL = 180.0  # seconds the lock outlives its holder's last pass (3 default intervals)

# KEYS[1] = lock; ARGV = token, ttl ms. 1 when the caller holds it (renewed), else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# KEYS[1] = lock; ARGV[1] = token: deleted only by its holder
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLock:
    """A :class:`~durable_adapter._cleanup_lock.WorkerLock` in a Redis key."""

    def __init__(self, client: Callable[[], Redis], key: str, ttl: float = LOCK_TTL) -> None:
        self._client = client
        self.key = key
        self.ttl_ms = int(ttl * 1000)
        self.description = f"Redis key {key}"
        self._token = secrets.token_hex(16)
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    async def try_acquire(self) -> bool:
        if self._held:
            return True
        try:
            taken = await self._client().set(self.key, self._token, nx=True, px=self.ttl_ms)
        except (RedisError, OSError) as exc:
            raise StoreError(f"taking the cleanup lock failed: {exc}") from exc
        self._held = bool(taken)
        return self._held

    async def check(self) -> None:
        if not self._held:
            raise StoreError("the cleanup lock is not held")
        try:
            renewed = await self._client().eval(_RENEW, 1, self.key, self._token, self.ttl_ms)
        except (RedisError, OSError) as exc:
            raise StoreError(f"renewing the cleanup lock failed: {exc}") from exc
        if not renewed:
            self._held = False
            raise StoreError("the cleanup lock expired and was taken by another cleanup")

    async def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            await self._client().eval(_RELEASE, 1, self.key, self._token)
        except (RedisError, OSError, StoreError):
            pass  # it expires by itself
