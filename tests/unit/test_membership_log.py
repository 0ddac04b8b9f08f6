"""When a socket was in which room: ``MembershipLog`` (``durable_adapter/stores/membership.py``).

A socket that joins a room when its node has delivered up to ``p`` receives that room's
packets with ``seq > p``; one that leaves at ``p`` received them up to ``p``. A replay
sends a packet only to a socket that was in its room at its seq. Each case is named for
the rule it checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from durable_adapter.stores.base import StoredPacket
from durable_adapter.stores.membership import MAX_CLOSED, MembershipLog

SID = "s1"


def log_of(*steps: tuple[str, str, int]) -> MembershipLog:
    """A log after ``("join" | "leave", room, at)`` steps, in order."""
    log = MembershipLog()
    for action, room, at in steps:
        getattr(log, action)(room, at)
    return log


def closed_stays(log: MembershipLog) -> int:
    return sum(left is not None for stays in log.rooms.values() for _, left in stays)


# -- join, leave, was_in -------------------------------------------------------------------

@pytest.mark.parametrize(("steps", "seq", "expected"), [
    pytest.param([("join", "r", 10)], 10, False,
                 id="a packet delivered before the join is not the newcomer's"),
    pytest.param([("join", "r", 10)], 11, True,
                 id="the first packet after the join is the member's"),
    pytest.param([("join", "r", 10)], 10**9, True,
                 id="a stay not yet ended covers every later packet"),
    pytest.param([("join", "r", 10), ("leave", "r", 20)], 20, True,
                 id="the packet delivered at the leave was received"),
    pytest.param([("join", "r", 10), ("leave", "r", 20)], 21, False,
                 id="a packet after the leave is not the leaver's"),
    pytest.param([("join", "r", 10), ("leave", "r", 20), ("join", "r", 30)], 25, False,
                 id="a packet while it was away is not the returner's"),
    pytest.param([("join", "r", 10), ("leave", "r", 20), ("join", "r", 30)], 31, True,
                 id="a packet after it came back is the returner's"),
    pytest.param([("join", "r", 10), ("join", "r", 15)], 12, True,
                 id="joining a room it is in changes nothing"),
    pytest.param([("leave", "r", 10)], 5, False,
                 id="leaving a room it was never in changes nothing"),
    pytest.param([("join", "other", 10)], 11, False,
                 id="a stay in another room does not count"),
])
def test_was_in(steps: list[tuple[str, str, int]], seq: int, expected: bool) -> None:
    assert log_of(*steps).was_in("r", seq) is expected


@pytest.mark.parametrize(("steps", "expected"), [
    pytest.param([("join", "r", 10)], {"r": [(10, None)]},
                 id="a join opens a stay after the join point"),
    pytest.param([("join", "r", 10), ("leave", "r", 20)], {"r": [(10, 20)]},
                 id="a leave closes the stay at the leave point"),
    pytest.param([("join", "r", 10), ("join", "r", 15)], {"r": [(10, None)]},
                 id="a second join keeps the first join point"),
    pytest.param([("join", "r", 10), ("leave", "r", 20), ("join", "r", 20)],
                 {"r": [(10, None)]},
                 id="leaving and coming back with nothing in between is one stay"),
    pytest.param([("join", "r", 10), ("leave", "r", 20), ("join", "r", 21)],
                 {"r": [(10, 20), (21, None)]},
                 id="coming back after a packet went by is a new stay"),
    pytest.param([("join", "r", 10), ("leave", "r", 10)], {},
                 id="a stay with no packet delivered during it is no stay at all"),
    pytest.param([("join", "r", 10), ("leave", "r", 20), ("join", "r", 30),
                  ("leave", "r", 30)], {"r": [(10, 20)]},
                 id="an empty stay goes, earlier stays stay"),
    pytest.param([("join", "r", 10), ("leave", "r", 20), ("leave", "r", 25)],
                 {"r": [(10, 20)]}, id="leaving twice ends the stay once"),
    pytest.param([("leave", "r", 5)], {}, id="a leave alone records nothing"),
])
def test_join_and_leave_record_stays(steps: list[tuple[str, str, int]],
                                     expected: dict[str, list[tuple[int, int | None]]]
                                     ) -> None:
    assert log_of(*steps).rooms == expected


# -- was_for ---------------------------------------------------------------------------------

def packet(seq: int, rooms: tuple[str, ...] = (), except_rooms: tuple[str, ...] = ()
           ) -> StoredPacket:
    return StoredPacket(namespace="/", data=["event"], rooms=rooms,
                        except_rooms=except_rooms, seq=seq, created_at=0.0)


IN_R = log_of(("join", "r", 10), ("leave", "r", 20), ("join", "x", 0))


@pytest.mark.parametrize(("sent", "expected"), [
    pytest.param(packet(15), True, id="a namespace-wide packet is for every socket"),
    pytest.param(packet(5), True,
                 id="a namespace-wide packet does not depend on any stay"),
    pytest.param(packet(15, rooms=("r",)), True, id="a room packet during the stay"),
    pytest.param(packet(25, rooms=("r",)), False, id="a room packet after the stay"),
    pytest.param(packet(5, rooms=("r",)), False, id="a room packet before the stay"),
    pytest.param(packet(25, rooms=("other", "r", "x")), True,
                 id="one room it was in at that seq is enough"),
    pytest.param(packet(25, rooms=(SID,)), True,
                 id="its own sid room is implied, never listed"),
    pytest.param(packet(5, rooms=("nobody", SID)), True,
                 id="its own sid room counts among others"),
    pytest.param(packet(15, except_rooms=("r",)), False,
                 id="a member of an except room at that seq is left out"),
    pytest.param(packet(25, except_rooms=("r",)), True,
                 id="an except room it had left by then does not exclude it"),
    pytest.param(packet(15, rooms=("r",), except_rooms=("x",)), False,
                 id="except wins over rooms"),
    pytest.param(packet(15, except_rooms=(SID,)), False,
                 id="its own sid excluded leaves it out"),
    pytest.param(packet(15, rooms=("other",)), False,
                 id="a room it was never in is not for it"),
])
def test_was_for(sent: StoredPacket, expected: bool) -> None:
    assert IN_R.was_for(sent, SID) is expected


# -- the bound: MAX_CLOSED finished stays ----------------------------------------------------

def churned(stays: int, *, rooms: int = 1, open_room: str | None = "lobby") -> MembershipLog:
    """``stays`` finished stays, 10 seqs apart, spread over ``rooms`` rooms; the socket
    stays in ``open_room`` throughout."""
    log = MembershipLog()
    if open_room is not None:
        log.join(open_room, 0)
    for i in range(stays):
        room = f"r{i % rooms}"
        log.join(room, 10 * i + 1)
        log.leave(room, 10 * i + 5)
    return log


@pytest.mark.parametrize("rooms", [1, 7, MAX_CLOSED + 1])
def test_at_max_closed_nothing_is_forgotten(rooms: int) -> None:
    log = churned(MAX_CLOSED, rooms=rooms)
    assert (closed_stays(log), log.since) == (MAX_CLOSED, 0)
    assert log.was_in("r0", 2)


@pytest.mark.parametrize("rooms", [1, 7, MAX_CLOSED + 1])
def test_beyond_max_closed_the_oldest_stay_goes_and_since_moves_to_its_end(rooms: int
                                                                           ) -> None:
    log = churned(MAX_CLOSED + 1, rooms=rooms)
    assert closed_stays(log) == MAX_CLOSED
    assert log.since == 5  # where the oldest stay ended
    assert not log.was_in("r0", 2)  # forgotten: a replay from before since is refused
    assert log.was_in("r1" if rooms > 1 else "r0", 12)  # the next oldest is kept


def test_the_bound_never_drops_a_stay_that_has_not_ended() -> None:
    log = churned(5 * MAX_CLOSED)
    assert closed_stays(log) == MAX_CLOSED
    assert log.rooms["lobby"] == [(0, None)]
    assert log.was_in("lobby", 1)


def test_the_bound_keeps_the_newest_stays() -> None:
    log = churned(3 * MAX_CLOSED, rooms=3)
    ends = sorted(left for stays in log.rooms.values() for _, left in stays
                  if left is not None)
    assert ends == [10 * i + 5 for i in range(2 * MAX_CLOSED, 3 * MAX_CLOSED)]
    assert log.since == 10 * (2 * MAX_CLOSED - 1) + 5


# -- forget_through ------------------------------------------------------------------------

@pytest.mark.parametrize(("through", "rooms", "since"), [
    pytest.param(19, {"a": [(10, 20), (30, None)], "b": [(5, 40)], "c": [(0, None)]}, 19,
                 id="stays that ended after the seq are kept"),
    pytest.param(20, {"a": [(30, None)], "b": [(5, 40)], "c": [(0, None)]}, 20,
                 id="a stay that ended at the seq is dropped"),
    pytest.param(40, {"a": [(30, None)], "c": [(0, None)]}, 40,
                 id="a room left with no stay is removed"),
    pytest.param(10**6, {"a": [(30, None)], "c": [(0, None)]}, 10**6,
                 id="stays still open are never dropped"),
])
def test_forget_through(through: int, rooms: dict[str, Any], since: int) -> None:
    log = log_of(("join", "a", 10), ("leave", "a", 20), ("join", "a", 30),
                 ("join", "b", 5), ("leave", "b", 40), ("join", "c", 0))
    log.forget_through(through)
    assert (log.rooms, log.since) == (rooms, since)


def test_forget_through_never_moves_since_back() -> None:
    log = MembershipLog(since=50)
    log.forget_through(10)
    assert log.since == 50


# -- restarted -------------------------------------------------------------------------------

def test_restarted_keeps_the_rooms_it_is_in_now_as_stays_from_the_new_start() -> None:
    log = log_of(("join", "in", 10), ("leave", "in", 20), ("join", "in", 30),
                 ("join", "left", 5), ("leave", "left", 15))
    log.since = 3
    fresh = log.restarted(7)
    assert (fresh.since, fresh.rooms) == (7, {"in": [(7, None)]})
    assert (fresh.was_in("in", 7), fresh.was_in("in", 8)) == (False, True)


def test_restarted_leaves_the_old_log_as_it_was() -> None:
    log = log_of(("join", "in", 10), ("join", "left", 5), ("leave", "left", 15))
    before = log.copy()
    log.restarted(7)
    assert log == before


# -- stored form -----------------------------------------------------------------------------

ROUND_TRIP = [
    pytest.param(MembershipLog(), id="an empty log"),
    pytest.param(log_of(("join", "a", 10), ("leave", "a", 20), ("join", "a", 30)),
                 id="a room with a finished and an open stay"),
    pytest.param(MembershipLog(since=42, rooms={"b": [(50, 60)]}), id="since is kept"),
    pytest.param(log_of(("join", "$where", 1), ("join", "a.b", 2), ("join", "", 3),
                        ("join", "ü 🙂", 4)),
                 id="room names a MongoDB key could not hold"),
    pytest.param(churned(MAX_CLOSED + 3, rooms=4), id="a bounded log"),
]


@pytest.mark.parametrize("log", ROUND_TRIP)
def test_the_stored_form_round_trips_through_json(log: MembershipLog) -> None:
    value = json.loads(json.dumps(log.to_value()))
    assert MembershipLog.from_value(value) == log


@pytest.mark.parametrize("log", ROUND_TRIP)
def test_the_stored_form_never_uses_a_room_name_as_a_key(log: MembershipLog) -> None:
    def keys(value: Any) -> set[str]:
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        if isinstance(value, list):
            return {k for v in value for k in keys(v)}
        return set()

    assert keys(log.to_value()) <= {"since", "rooms"}


def valid() -> dict[str, Any]:
    return {"since": 0, "rooms": [["r", [[1, 5], [7, None]]]]}


def changed(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    value = valid()
    change(value)
    return value


MALFORMED: list[Any] = [
    pytest.param(None, id="None"),
    pytest.param([], id="a list"),
    pytest.param("since", id="a string"),
    pytest.param(changed(lambda v: v.pop("since")), id="since missing"),
    pytest.param(changed(lambda v: v.pop("rooms")), id="rooms missing"),
    pytest.param(changed(lambda v: v.update(since=True)), id="since a boolean"),
    pytest.param(changed(lambda v: v.update(since=1.0)), id="since a float"),
    pytest.param(changed(lambda v: v.update(since="0")), id="since a string"),
    pytest.param(changed(lambda v: v.update(rooms=None)), id="rooms None"),
    pytest.param(changed(lambda v: v.update(rooms={"r": [[1, None]]})),
                 id="rooms keyed by name"),
    pytest.param(changed(lambda v: v.update(rooms=[[7, [[1, None]]]])),
                 id="a room name that is not a string"),
    pytest.param(changed(lambda v: v.update(rooms=[["r"]])), id="a room without stays"),
    pytest.param(changed(lambda v: v.update(rooms=[["r", [[1, None]], "x"]])),
                 id="a room entry with an extra item"),
    pytest.param(changed(lambda v: v.update(rooms=[["r", [[1]]]])),
                 id="a stay without its end"),
    pytest.param(changed(lambda v: v.update(rooms=[["r", [[1, 2, 3]]]])),
                 id="a stay of three seqs"),
    pytest.param(changed(lambda v: v.update(rooms=[["r", [["1", None]]]])),
                 id="a join point that is a string"),
    pytest.param(changed(lambda v: v.update(rooms=[["r", [[True, None]]]])),
                 id="a join point that is a boolean"),
    pytest.param(changed(lambda v: v.update(rooms=[["r", [[1, 2.5]]]])),
                 id="a leave point that is a float"),
    pytest.param(changed(lambda v: v.update(rooms=[["r", 5]])), id="stays not a list"),
    # values to_value never produces, which from_value's docstring refuses
    pytest.param(
        changed(lambda v: v["rooms"].append(["r", [[20, None]]])),
        id="the same room twice"),
    pytest.param(
        changed(lambda v: v.update(rooms=[["r", []]])),
        id="a room with no stay"),
    pytest.param(
        changed(lambda v: v.update(rooms=[["r", [[9, 3]]]])),
        id="a stay that ends before it starts"),
    pytest.param(
        changed(lambda v: v.update(rooms=[["r", [[1, None], [7, 9]]]])),
        id="an open stay that is not the last"),
]


def test_the_valid_value_the_malformed_ones_start_from_is_accepted() -> None:
    assert MembershipLog.from_value(valid()) == MembershipLog(
        since=0, rooms={"r": [(1, 5), (7, None)]})


@pytest.mark.parametrize("value", MALFORMED)
def test_from_value_refuses_what_to_value_never_produces(value: Any) -> None:
    with pytest.raises(ValueError, match="not a membership log"):
        MembershipLog.from_value(value)
