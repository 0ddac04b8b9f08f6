"""Key layout, URL options and Lua scripts of the Redis store (each script runs atomically).

Every key of one store starts with ``{prefix}``: the braces are a Redis Cluster hash tag,
so all of them live on one shard and a script may touch several (one counter per store
means one shard anyway). Numbers above 10^14 lose digits in Lua's default number
formatting, so the scripts format seqs with ``%.0f`` (exact below 2^53).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...exceptions import ConfigurationError

KEY_VERSION = "v1"  # part of every key name: a new layout gets new keys, old nodes keep theirs
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


_URL_OPTIONS = {"prefix": str, "maxlen": int, "block_ms": int}


def parse_url(url: str) -> tuple[str, dict[str, Any]]:
    """Split our options (``prefix``, ``maxlen``, ``block_ms``) off
    the query of a ``redis://`` / ``rediss://`` URL; the rest goes to redis-py.

    >>> parse_url("redis://h:6379/2?prefix=app&maxlen=5000&socket_timeout=3")
    ('redis://h:6379/2?socket_timeout=3', {'prefix': 'app', 'maxlen': 5000})
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(f"a Redis store URL starts with redis:// or rediss://: {url!r}")
    options: dict[str, Any] = {}
    rest = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _URL_OPTIONS:
            try:
                options[name] = _URL_OPTIONS[name](value)
            except ValueError:
                raise ConfigurationError(f"{name} in the store URL must be a number") from None
        else:
            rest.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), options


class Keys:
    """The names of one store's keys. Namespaces and sids are length-prefixed, so two
    different ``(namespace, sid)`` pairs never share a key."""

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"prefix must be 1-100 characters of A-Z a-z 0-9 _ . : -, got {prefix!r}"
            )
        self.prefix = prefix
        base = f"{{{prefix}}}:{KEY_VERSION}"
        self.epoch = f"{base}:epoch"
        self.top = f"{base}:top"  # the counter: the last seq handed out
        self.floor = f"{base}:floor"  # seqs <= floor belong to no retained history
        # the stream: packet <seq> has the entry id "<seq>-0"; a control message sent
        # when the top was <seq> has "<seq>-<n>" (n >= 1), so it sits in packet order
        self.packets = f"{base}:packets"
        self.expiry = f"{base}:expiry"  # zset: session key -> expires_at
        self._sessions = f"{base}:s:"
        self._sids = f"{base}:i:"

    @property
    def history(self) -> list[str]:
        """The KEYS of the scripts that read or create the history."""
        return [self.epoch, self.top, self.floor, self.packets]

    def session_prefix(self, namespace: str) -> str:
        return f"{self._sessions}{len(namespace)}:{namespace}:"

    def session(self, namespace: str, pid_hash: str) -> str:
        return self.session_prefix(namespace) + pid_hash

    def sid_index(self, namespace: str, sid: str) -> str:
        """A set of the pid hashes stored for ``(namespace, sid)``."""
        return f"{self._sids}{len(namespace)}:{namespace}:{sid}"

    def all_pattern(self) -> str:
        """A SCAN pattern matching every key of this store (tests delete with it)."""
        return f"{{{self.prefix}}}:*"


# KEYS[1..4] = epoch, top, floor, packets. A missing epoch or counter means the history
# is gone (FLUSHALL, a restart without persistence, keys deleted by hand): start a new
# one under the candidate epoch ARGV[1]. Its seqs start above anything seen before: the
# old counter, the old stream's last id, and with ARGV[2] == "1" Redis' clock in
# microseconds, so that the cursors of nodes still running from the old history stay
# below every new seq. The old stream is deleted: its entries belong to no history now.
_HISTORY = """
local function history(candidate, use_time)
  local epoch = redis.call('GET', KEYS[1])
  if epoch and redis.call('EXISTS', KEYS[2]) == 1 then
    return epoch
  end
  local base = 0
  if use_time == '1' then
    local t = redis.call('TIME')
    base = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  local old = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if old > base then base = old end
  local last = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
  if last[1] then
    local seq = tonumber(string.match(last[1][1], '^(%d+)'))
    if seq > base then base = seq end
  end
  redis.call('DEL', KEYS[4])
  local text = string.format('%.0f', base)
  redis.call('SET', KEYS[1], candidate)
  redis.call('SET', KEYS[2], text)
  redis.call('SET', KEYS[3], text)
  return candidate
end
"""

# ARGV = candidate epoch, use_time, approximate MAXLEN, then (namespace, payload) pairs.
# One INCRBY for the batch, then one XADD per packet with the explicit id "<seq>-0": the
# stream order is the counter order. Returns {epoch, first seq}.
APPEND = (
    _HISTORY
    + """
local epoch = history(ARGV[1], ARGV[2])
local count = (#ARGV - 3) / 2
local first = redis.call('INCRBY', KEYS[2], count) - count + 1
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
for i = 0, count - 1 do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], string.format('%.0f-0', first + i),
             'n', ARGV[4 + 2 * i], 'p', ARGV[5 + 2 * i], 't', now, 'e', epoch)
end
return {epoch, first}
"""
)

# ARGV = candidate epoch, use_time. Returns {epoch, top, purged_through}: every packet
# before the first retained entry is purged (trimmed by MAXLEN, XTRIM, or deleted), and
# an empty stream retains nothing.
BOUNDS = (
    _HISTORY
    + """
local epoch = history(ARGV[1], ARGV[2])
local top = tonumber(redis.call('GET', KEYS[2]))
local purged = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
local first = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
if first[1] then
  local seq, n = string.match(first[1][1], '^(%d+)-(%d+)$')
  local before = tonumber(seq)
  if n == '0' then before = before - 1 end
  if before > purged then purged = before end
else
  purged = top
end
return {epoch, top, purged}
"""
)

# ARGV = candidate epoch, approximate MAXLEN, message. A control message gets the id
# "<top>-*": after packet <top>, before packet <top> + 1, in the one stream every node
# follows, so a node's enter_room(sid, r) then emit(to=r) are applied in that order on
# every node (as python-socketio's single pub/sub channel does).
CONTROL = (
    _HISTORY
    + """
local epoch = history(ARGV[1], '1')
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local top = redis.call('GET', KEYS[2])
return redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], top .. '-*',
                  'm', ARGV[3], 't', now, 'e', epoch)
"""
)

# KEYS = session, sid index, expiry; ARGV = sid, blob, ttl ms, expires_at, pid_hash,
# forget index entries of sessions that expired before this time.
SAVE_SESSION = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'sid', ARGV[1], 'v', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[5])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('ZADD', KEYS[3], ARGV[4], KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[6])
return 1
"""

# KEYS = session, expiry, epoch. Of two concurrent claims only one gets the value.
# Returns {value or nil, current epoch or nil}.
CLAIM_SESSION = """
local value = redis.call('HGET', KEYS[1], 'v')
if value then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], KEYS[1])
return {value or false, redis.call('GET', KEYS[3]) or false}
"""

# KEYS = sid index, expiry; ARGV = session key prefix of the namespace, sid.
DELETE_SESSIONS = """
local removed = 0
for _, pid_hash in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. pid_hash
  if redis.call('HGET', key, 'sid') == ARGV[2] then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[2], key)
    removed = removed + 1
  end
end
redis.call('DEL', KEYS[1])
return removed
"""

# KEYS = expiry; ARGV = now, batch size. Deletes (and counts) sessions whose expires_at
# has passed, whether or not Redis' own TTL removed their key already.
PURGE_SESSIONS = """
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, key in ipairs(keys) do
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], key)
end
return #keys
"""
