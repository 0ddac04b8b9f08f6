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
from ..targets import target_key

#: part of every key name: a new layout gets new keys, old nodes keep theirs. v2: the
#: target index; packets stored under v1 were not indexed, so a v2 node starts a history
#: of its own (a client owed v1 packets is refused as of another history, never given a
#: replay with a hole)
KEY_VERSION = "v2"
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
        self.expiry = f"{base}:expiry"  # zset: session key -> expires_at (disconnected ones)
        self.leases = f"{base}:leases"  # zset: node -> expires_at of its lease
        self.owners = f"{base}:owners"  # set of the nodes that own (or owned) a session
        self._sessions = f"{base}:s:"
        self._sids = f"{base}:i:"
        #: + node: a set of the session keys that node owns (for the purge once it is dead)
        self.owned_prefix = f"{base}:o:"
        #: the one-active-cleanup lock: a token with a TTL (:mod:`.cleanup_lock`)
        self.cleanup_lock = f"{base}:cleanup-lock"
        #: hash: node -> the max_disconnection_duration it runs with (its lease says
        #: whether it is alive): what a cleanup worker keeps packets for
        self.retention = f"{base}:retention"
        # the target index (stores/targets.py): a zset per (namespace, target), member
        # and score the seq of each retained packet sent to it; ``targets`` lists those
        # zsets, scored by the last seq each got (the purge deletes the idle ones)
        self.targets = f"{base}:targets"
        self._target = f"{base}:t:"

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

    def target(self, namespace: str, target: str) -> str:
        """The zset of the seqs of the packets of ``namespace`` sent to ``target``."""
        return self._target + target_key(namespace, target)

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

# The first retained packet's seq of the stream (KEYS[4]), or nil when it is empty.
_HEAD = """
local function head_seq()
  local first = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
  if not first[1] then return nil end
  local seq, n = string.match(first[1][1], '^(%d+)-(%d+)$')
  if n == '0' then return tonumber(seq) end
  return tonumber(seq) + 1
end
"""

# KEYS = epoch, top, floor, packets, targets, then the target zsets the batch writes.
# ARGV = candidate epoch, use_time, approximate MAXLEN, packet count, then per packet:
# namespace, payload, k, and the k indexes into KEYS of its target zsets. One INCRBY for
# the batch, then one XADD per packet with the explicit id "<seq>-0" (the stream order is
# the counter order) and its seq into each of its target zsets, in the same script. The
# zsets written are trimmed below the stream's first retained packet. Returns
# {epoch, first seq}.
APPEND = (
    _HISTORY
    + _HEAD
    + """
local epoch = history(ARGV[1], ARGV[2])
local count = tonumber(ARGV[4])
local first = redis.call('INCRBY', KEYS[2], count) - count + 1
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local a = 5
for i = 0, count - 1 do
  local seq = string.format('%.0f', first + i)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], seq .. '-0',
             'n', ARGV[a], 'p', ARGV[a + 1], 't', now, 'e', epoch)
  local k = tonumber(ARGV[a + 2])
  for j = 1, k do
    local key = KEYS[tonumber(ARGV[a + 2 + j])]
    redis.call('ZADD', key, seq, seq)
    redis.call('ZADD', KEYS[5], seq, key)
  end
  a = a + 3 + k
end
local head = head_seq()
if head then
  for j = 6, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[j], '-inf', '(' .. string.format('%.0f', head))
  end
end
return {epoch, first}
"""
)

# KEYS = packets, then target zsets; ARGV = epoch, then per range: index into KEYS of
# its zset, after, until, limit. Returns {seqs per range, entries}: each range's seqs
# (at most limit, ascending), and the stream entry of each seq once (a seq whose entry
# was trimmed meanwhile has none: the caller's check of the bounds refuses that replay).
READ_TARGETS = """
local seen, ranges, entries = {}, {}, {}
for r = 0, (#ARGV - 1) / 4 - 1 do
  local a = 2 + 4 * r
  local seqs = redis.call('ZRANGEBYSCORE', KEYS[tonumber(ARGV[a])], '(' .. ARGV[a + 1],
                          ARGV[a + 2], 'LIMIT', 0, tonumber(ARGV[a + 3]))
  ranges[r + 1] = seqs
  for _, seq in ipairs(seqs) do
    if not seen[seq] then
      seen[seq] = true
      local entry = redis.call('XRANGE', KEYS[1], seq .. '-0', seq .. '-0')
      if entry[1] then entries[#entries + 1] = entry[1] end
    end
  end
end
return {ranges, entries}
"""

# KEYS = epoch, top, floor, packets, targets. Deletes the target zsets whose every seq is
# below the stream's first retained packet (each trims the rest at its next append), at
# most ARGV[1] of them. Returns how many were deleted.
PURGE_TARGETS = (
    _HEAD
    + """
local head = head_seq()
local below = head and '(' .. string.format('%.0f', head) or '+inf'
local idle = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', below, 'LIMIT', 0,
                        tonumber(ARGV[1]))
for _, key in ipairs(idle) do
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[5], key)
end
return #idle
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

# A session is a hash: sid, v (the encoded Session), e (expires_at), i (its sid index
# key), p (pid hash), and o (the owning node) while a socket is live with it. An owned
# session has no TTL and is not in the expiry zset: it goes with its owner's lease (the
# owner's index, ``owned_prefix .. node``, lists it for the purge). A disconnected one
# has a TTL of its remaining lifetime and is in the expiry zset.

# KEYS = expiry, owners, then (session, sid index) per session; ARGV = node ('' writes
# unconditionally), owned prefix, forget expiry entries of sessions that expired before
# this time, then (sid, pid_hash, blob, owner or '', expires_at, ttl ms) per session.
# With a node, only an absent session or one the node owns is written (one taken over,
# or released since, is left alone).
SAVE_SESSIONS = """
local node, owned = ARGV[1], ARGV[2]
local written = 0
for i = 0, (#KEYS - 2) / 2 - 1 do
  local key, index = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local a = 4 + 6 * i
  local sid, pid, blob, owner, expires, ttl =
    ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local current = redis.call('HGET', key, 'o')
  if node == '' or current == node or redis.call('EXISTS', key) == 0 then
    if current and current ~= owner then redis.call('SREM', owned .. current, key) end
    redis.call('DEL', key)
    redis.call('HSET', key, 'sid', sid, 'v', blob, 'e', expires, 'i', index, 'p', pid)
    redis.call('SADD', index, pid)
    if owner ~= '' then
      redis.call('HSET', key, 'o', owner)
      redis.call('SADD', owned .. owner, key)
      redis.call('SADD', KEYS[2], owner)
      redis.call('ZREM', KEYS[1], key)
      redis.call('PERSIST', index)
    else
      redis.call('PEXPIRE', key, ttl)
      if redis.call('PTTL', index) < tonumber(ttl) then
        redis.call('PEXPIRE', index, ttl)
      end
      redis.call('ZADD', KEYS[1], expires, key)
    end
    written = written + 1
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
return written
"""

# KEYS = leases, expiry, owners, epoch, then one session per request; ARGV = node, now,
# window, owned prefix, then each request's force_from or ''. The rules of
# rules.decide_takes, in one script: of concurrent takes of a row the first makes its node
# the owner and the others then see it; of duplicates in one call only the first gets it.
# Returns {epoch (false once the history is gone), answers}, two items per request: 0,
# false (absent, expired, or given to an earlier duplicate); 1, value (the caller's now);
# 2, owner (owned by a live node).
TAKE_SESSIONS = """
local epoch = redis.call('GET', KEYS[4]) or false
local node, now, window, owned = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local answers, given = {}, {}
for i = 5, #KEYS do
  local key, force = KEYS[i], ARGV[i]
  local code, answer = 0, false
  local value = redis.call('HGET', key, 'v')
  if value and not given[key] then
    local owner = redis.call('HGET', key, 'o')
    local take = true
    if owner == node then
      take = false
      code, answer = 1, value
    elseif owner then
      if force ~= owner then
        local lease = redis.call('ZSCORE', KEYS[1], owner)
        if lease and tonumber(lease) > now then
          take = false
          code, answer = 2, owner
        elseif tonumber(lease or '0') + window <= now then
          take = false
        end
      end
    else
      local expires = tonumber(redis.call('HGET', key, 'e') or '')
      if expires and expires <= now then take = false end
    end
    if take then
      if owner then redis.call('SREM', owned .. owner, key) end
      redis.call('HSET', key, 'o', node)
      redis.call('PERSIST', key)
      redis.call('ZREM', KEYS[2], key)
      redis.call('SADD', owned .. node, key)
      redis.call('SADD', KEYS[3], node)
      local index = redis.call('HGET', key, 'i')
      if index then redis.call('PERSIST', index) end
      code, answer = 1, value
    end
    if code == 1 then given[key] = true end
  end
  answers[#answers + 1] = code
  answers[#answers + 1] = answer
end
return {epoch, answers}
"""

# KEYS = expiry, then the sid index of each socket; ARGV = owned prefix, then (session key
# prefix of the namespace, sid) per socket. Deletes every session of each socket, live or
# disconnected, and its index. Returns the sessions deleted.
DELETE_SESSIONS = """
local removed = 0
for i = 2, #KEYS do
  local index, prefix, sid = KEYS[i], ARGV[2 * i - 2], ARGV[2 * i - 1]
  for _, pid_hash in ipairs(redis.call('SMEMBERS', index)) do
    local key = prefix .. pid_hash
    if redis.call('HGET', key, 'sid') == sid then
      local owner = redis.call('HGET', key, 'o')
      if owner then redis.call('SREM', ARGV[1] .. owner, key) end
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[1], key)
      removed = removed + 1
    end
  end
  redis.call('DEL', index)
end
return removed
"""

# KEYS = sessions; no ARGV. Read-only. Returns one item per key: false (no session), ''
# (a disconnected one) or the owning node.
OWNERS = """
local answers = {}
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    answers[i] = redis.call('HGET', KEYS[i], 'o') or ''
  else
    answers[i] = false
  end
end
return answers
"""

# KEYS = leases, owners; ARGV = cutoff, batch size, owned prefix. Deletes up to a batch
# of the sessions owned by nodes whose lease expired at or before the cutoff (no lease:
# expired at 0), then the leases expired before it that own nothing. Returns {sessions
# deleted, entries handled}: the caller repeats until nothing is left to handle.
PURGE_OWNED = """
local cutoff, batch, owned = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local removed, work = 0, 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local index = owned .. node
  if tonumber(redis.call('ZSCORE', KEYS[1], node) or '0') <= cutoff then
    for _, key in ipairs(redis.call('SRANDMEMBER', index, batch - work)) do
      if redis.call('HGET', key, 'o') == node then
        local sids, pid = redis.call('HGET', key, 'i'), redis.call('HGET', key, 'p')
        redis.call('DEL', key)
        if sids and pid then redis.call('SREM', sids, pid) end
        removed = removed + 1
      end
      redis.call('SREM', index, key)
      work = work + 1
    end
  end
  if redis.call('EXISTS', index) == 0 then redis.call('SREM', KEYS[2], node) end
  if work >= batch then return {removed, work} end
end
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0,
                                 batch)) do
  if redis.call('EXISTS', owned .. node) == 0 then
    redis.call('ZREM', KEYS[1], node)
    work = work + 1
  end
end
return {removed, work}
"""

# KEYS = expiry; ARGV = now, batch size. Deletes (and counts) sessions whose expires_at
# has passed, whether or not Redis' own TTL removed their key already. Returns {sessions
# deleted, expiry entries handled}.
PURGE_SESSIONS = """
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local removed = 0
for _, key in ipairs(keys) do
  if not redis.call('HGET', key, 'o') then  -- a taken one stays, its owner's now
    redis.call('DEL', key)
    removed = removed + 1
  end
  redis.call('ZREM', KEYS[1], key)
end
return {removed, #keys}
"""
