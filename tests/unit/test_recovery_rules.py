"""What a reconnecting client is owed: the pure decisions of ``durable_adapter/_recovery.py``.

Each case is named for the rule it checks, in the words of the docstrings there and of
docs/design-rules.md. No server, no store: sessions are built by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from durable_adapter._offsets import format_offset
from durable_adapter._recovery import (
    RecoveryFailure,
    check_offset,
    check_window,
    next_resume_seq,
    replay_start,
    resume_seq_of,
    split_auth,
)
from durable_adapter.stores.base import LIVE_EXPIRY, HistoryBounds, Session

EPOCH = "0123abcd"  # the store's history
OTHER_EPOCH = "fedcba98"  # a history that was replaced

# a disconnected session: connected at 10, sent 40 last, gone when the node had delivered 50
# (a saved position is never below the last seq sent: the server saves the larger of both)
START, SENT, POSITION = 10, 40, 50

R = RecoveryFailure


def offset(seq: int, epoch: str = EPOCH) -> str:
    return format_offset(epoch, seq)


def session(**changes: Any) -> Session:
    base = Session(pid_hash="0" * 64, namespace="/", sid="s1", rooms=("s1", "room"),
                   data=None, epoch=EPOCH, start_seq=START, position=POSITION,
                   last_sent_seq=SENT, disconnected_at=1000.0, expires_at=1120.0)
    return dataclasses.replace(base, **changes)


def live(**changes: Any) -> Session:
    """A row taken over while its node held it live (killed, or did not let go)."""
    return session(expires_at=LIVE_EXPIRY, owner="dead-node", **changes)


# -- replay_start ------------------------------------------------------------------------

REPLAY_START = [
    # the history
    pytest.param(session(epoch=OTHER_EPOCH), offset(SENT), None, (None, R.HISTORY_RESET),
                 id="a session of another history is refused as a reset"),
    pytest.param(session(epoch=OTHER_EPOCH), None, None, (None, R.HISTORY_RESET),
                 id="a session of another history is refused even without an offset"),
    pytest.param(session(), offset(SENT, OTHER_EPOCH), None, (None, R.HISTORY_RESET),
                 id="an offset of another history is refused as a reset"),
    pytest.param(session(), "not an offset", None, (None, R.MALFORMED),
                 id="an offset we did not issue is malformed"),
    pytest.param(session(), 40, None, (None, R.MALFORMED),
                 id="an offset that is not a string is malformed"),
    # no offset
    pytest.param(session(last_sent_seq=None), None, None, (POSITION, None),
                 id="no offset and nothing sent: owed what came after it went away"),
    pytest.param(session(), None, None, (START, None),
                 id="no offset but something sent: replayed from start_seq "
                    "when no resume point was saved"),
    pytest.param(session(resume_seq=30), None, None, (30, None),
                 id="no offset but something sent: replayed from the resume point"),
    # a disconnected session, with an offset
    pytest.param(session(), offset(SENT), None, (POSITION, None),
                 id="holding the last packet sent: owed only what came after it went away"),
    pytest.param(session(), offset(25), None, (25, None),
                 id="holding an older offset: owed everything after it"),
    pytest.param(session(), offset(3), None, (START, None),
                 id="an offset before the socket connected is floored at start_seq"),
    pytest.param(session(), offset(POSITION + 1), None, (None, R.OFFSET_AHEAD),
                 id="an offset past what the node delivered is ahead"),
    pytest.param(session(last_sent_seq=POSITION), offset(POSITION + 1), None,
                 (None, R.OFFSET_AHEAD),
                 id="an offset past the last packet sent is ahead"),
    pytest.param(session(), offset(POSITION + 1), POSITION + 100, (None, R.OFFSET_AHEAD),
                 id="a disconnected session's own record bounds the offset, not the top"),
    # a session taken over from a live row: its record is only as fresh as its last write
    pytest.param(live(), offset(POSITION + 20), POSITION + 20, (POSITION + 20, None),
                 id="taken over: an offset past the row's position is trusted up to top"),
    pytest.param(live(), offset(POSITION + 21), POSITION + 20, (None, R.OFFSET_AHEAD),
                 id="taken over: an offset past the last committed seq is ahead"),
    pytest.param(live(), offset(POSITION + 500), None, (POSITION + 500, None),
                 id="taken over: without a top the offset is trusted"),
    pytest.param(live(), offset(3), POSITION, (START, None),
                 id="taken over: an offset before the socket connected is floored"),
    pytest.param(live(), offset(SENT), POSITION, (SENT, None),
                 id="taken over: the replay starts at the client's offset, "
                    "not the row's position"),
    pytest.param(live(), offset(SENT, OTHER_EPOCH), POSITION, (None, R.HISTORY_RESET),
                 id="taken over: an offset of another history is still a reset"),
]


@pytest.mark.parametrize(("stored", "sent_offset", "top", "expected"), REPLAY_START)
def test_replay_start(stored: Session, sent_offset: object, top: int | None,
                      expected: tuple[int | None, RecoveryFailure | None]) -> None:
    assert replay_start(stored, sent_offset, EPOCH, top=top) == expected


# -- resume_seq_of and next_resume_seq ---------------------------------------------------

@pytest.mark.parametrize(("stored", "expected"), [
    pytest.param(session(resume_seq=None), START,
                 id="a session saved without a resume point resumes at start_seq"),
    pytest.param(session(resume_seq=33), 33, id="the saved resume point is used"),
    pytest.param(session(resume_seq=START - 1), START - 1,
                 id="the saved resume point is used as it is, not floored"),
])
def test_resume_seq_of(stored: Session, expected: int) -> None:
    assert resume_seq_of(stored) == expected


@pytest.mark.parametrize(("stored", "sent_offset", "start", "expected"), [
    pytest.param(session(), offset(25), 25, 25,
                 id="a client with an offset confirmed the replay's start"),
    pytest.param(session(), offset(3), START, START,
                 id="a client with an offset confirmed the floored start"),
    pytest.param(session(last_sent_seq=None), None, POSITION, POSITION,
                 id="no offset and nothing sent: the replay's start"),
    pytest.param(session(), None, START, SENT,
                 id="no offset: what the previous connection was sent counts as received"),
    pytest.param(session(resume_seq=45), None, 45, 45,
                 id="no offset: the resume point never moves back"),
    pytest.param(session(resume_seq=20), None, 20, SENT,
                 id="no offset: a resume point below the last sent moves up to it"),
])
def test_next_resume_seq(stored: Session, sent_offset: object, start: int,
                         expected: int) -> None:
    assert next_resume_seq(stored, sent_offset, start) == expected


@pytest.mark.parametrize("resume", [None, 20])
def test_a_client_without_offsets_gets_each_packet_again_once_only(resume: int | None
                                                                  ) -> None:
    """Two recoveries in a row without an offset: the second replays nothing the first
    already replayed (a client that keeps no offsets is not replayed everything since
    its first connect on every recovery)."""
    first = session(resume_seq=resume)
    start, failure = replay_start(first, None, EPOCH)
    assert failure is None and start is not None
    assert start <= SENT  # what was sent before the drop comes again, once
    # the recovered socket is sent nothing more and drops again at the same place
    second = dataclasses.replace(first, resume_seq=next_resume_seq(first, None, start))
    assert replay_start(second, None, EPOCH) == (SENT, None)


# -- check_offset --------------------------------------------------------------------------

@pytest.mark.parametrize(("sent_offset", "expected"), [
    pytest.param(None, None, id="no offset is nothing wrong"),
    pytest.param(offset(7), None, id="an offset of this history passes"),
    pytest.param(offset(7, OTHER_EPOCH), R.HISTORY_RESET,
                 id="an offset of another history is a reset"),
    pytest.param("", R.MALFORMED, id="an empty string is malformed"),
    pytest.param("garbage", R.MALFORMED, id="a string we did not issue is malformed"),
    pytest.param(offset(7) + "x" * 64, R.MALFORMED,
                 id="an overlong string is malformed"),
    pytest.param(7, R.MALFORMED, id="a number is malformed"),
    pytest.param(True, R.MALFORMED, id="a boolean is malformed"),
    pytest.param(offset(7).encode(), R.MALFORMED, id="bytes are malformed"),
    pytest.param([offset(7)], R.MALFORMED, id="a list is malformed"),
    pytest.param({"offset": offset(7)}, R.MALFORMED, id="a dict is malformed"),
    pytest.param(f"{EPOCH}-0", R.MALFORMED, id="seq 0 is never issued"),
    pytest.param(f"{EPOCH}--7", R.MALFORMED, id="a negative seq is malformed"),
    pytest.param(f"{EPOCH}-007", R.MALFORMED, id="a seq with leading zeros is malformed"),
    pytest.param(f"{EPOCH.upper()}-7", R.MALFORMED,
                 id="an epoch in another spelling is malformed"),
    pytest.param(f" {offset(7)}", R.MALFORMED, id="surrounding space is malformed"),
])
def test_check_offset(sent_offset: object, expected: RecoveryFailure | None) -> None:
    assert check_offset(sent_offset, EPOCH) == expected


# -- check_window --------------------------------------------------------------------------

def bounds(purged_through: int, top: int = 1000) -> HistoryBounds:
    return HistoryBounds(epoch=EPOCH, top=top, purged_through=purged_through)


@pytest.mark.parametrize(("start", "purged", "expected"), [
    pytest.param(100, 0, None, id="a retained range is replayed"),
    pytest.param(100, 100, None,
                 id="starting exactly at the purge mark: every packet after it is retained"),
    pytest.param(99, 100, R.NOT_RETAINED,
                 id="starting below the purge mark: a packet it is owed is gone"),
])
def test_check_window(start: int, purged: int, expected: RecoveryFailure | None) -> None:
    assert check_window(start, bounds(purged)) == expected


# -- split_auth ----------------------------------------------------------------------------

PID = "p" * 32


@pytest.mark.parametrize(("data", "expected"), [
    pytest.param({"pid": PID, "offset": "o", "token": "t"}, ({"token": "t"}, PID, "o"),
                 id="pid and offset are taken out, the application's keys stay"),
    pytest.param({"pid": PID}, ({}, PID, None),
                 id="a pid without an offset (no event received yet)"),
    pytest.param({"offset": "o", "user": 1}, ({"user": 1}, None, "o"),
                 id="an offset without a pid is still taken out"),
    pytest.param({"pid": None, "offset": None, "a": 1}, ({"a": 1}, None, None),
                 id="keys present with None are removed too"),
    pytest.param({"token": "t"}, ({"token": "t"}, None, None),
                 id="auth without pid or offset is the application's as sent"),
    pytest.param({}, ({}, None, None), id="empty auth stays empty"),
    pytest.param(None, (None, None, None), id="no auth at all"),
    pytest.param("token", ("token", None, None), id="a string auth is the application's"),
    pytest.param(["pid", "offset"], (["pid", "offset"], None, None),
                 id="a list naming pid and offset is not recovery data"),
])
def test_split_auth(data: Any, expected: tuple[Any, object, object]) -> None:
    assert split_auth(data) == expected


def test_split_auth_leaves_the_callers_dict_alone() -> None:
    data = {"pid": PID, "offset": "o", "token": "t"}
    auth, _, _ = split_auth(data)
    assert data == {"pid": PID, "offset": "o", "token": "t"}
    auth["token"] = "changed"
    assert data["token"] == "t"
