"""Offsets and private ids as they travel on the wire, validated before any query."""

from __future__ import annotations

import hashlib
import re
import secrets

# an offset is "<epoch>-<seq>": the history it belongs to, then the packet's seq
_OFFSET = re.compile(r"([0-9a-f]{8,32})-([1-9][0-9]{0,17})")
# what we mint: 24 random bytes, urlsafe base64 (192 bits)
_PID = re.compile(r"[A-Za-z0-9_-]{32}")
MAX_WIRE_LENGTH = 64


def format_offset(epoch: str, seq: int) -> str:
    return f"{epoch}-{seq}"


def parse_offset(offset: object) -> tuple[str, int] | None:
    """``(epoch, seq)``, or None for anything that is not an offset we issued."""
    if not isinstance(offset, str) or len(offset) > MAX_WIRE_LENGTH:
        return None
    match = _OFFSET.fullmatch(offset)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def new_pid() -> str:
    return secrets.token_urlsafe(24)


def is_valid_pid(pid: object) -> bool:
    return isinstance(pid, str) and _PID.fullmatch(pid) is not None


def hash_pid(pid: str) -> str:
    """Stores keep only this: a leaked table does not hand out sessions."""
    return hashlib.sha256(pid.encode()).hexdigest()
