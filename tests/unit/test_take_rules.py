"""Who gets a stored session: ``decide_take`` and ``decide_takes``, the rules every store's
``take_session``/``take_sessions`` applies (the Redis script and the MongoDB store too).

Each case is named for the rule it checks, in the words of their docstrings. Times are
unix seconds; ``NOW`` and ``WINDOW`` (max_disconnection_duration) are fixed.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit._rules import MINE, TAKE, OwnedBy, TakeRequest, decide_take, decide_takes

NODE = "me"
NOW = 1000.0
WINDOW = 100.0
LIVE = 1e18  # the expires_at of a live row (stores.base.LIVE_EXPIRY)


def take(*, owner: str | None, expires_at: float = LIVE, lease: float | None = None,
         force_from: str | None = None, now: float = NOW) -> Any:
    return decide_take(owner=owner, expires_at=expires_at, lease_expires=lease, node=NODE,
                       now=now, window=WINDOW, force_from=force_from)


@pytest.mark.parametrize(("row", "expected"), [
    # disconnected (owner None): its own expiry decides
    pytest.param(dict(owner=None, expires_at=NOW + 1), TAKE,
                 id="a disconnected session is taken before it expires"),
    pytest.param(dict(owner=None, expires_at=NOW), None,
                 id="a disconnected session is expired at its expires_at"),
    pytest.param(dict(owner=None, expires_at=NOW - 1), None,
                 id="an expired disconnected session is not taken"),
    pytest.param(dict(owner=None, expires_at=NOW - 1, force_from="b"), None,
                 id="forcing does not revive an expired disconnected session"),
    # owned by the caller
    pytest.param(dict(owner=NODE, lease=NOW + 5), MINE,
                 id="a session this node owns is mine"),
    pytest.param(dict(owner=NODE, lease=0.0), MINE,
                 id="a session this node owns is mine even when its own lease looks lapsed"),
    pytest.param(dict(owner=NODE, force_from=NODE), MINE,
                 id="forcing from oneself is still mine"),
    # owned by a live node
    pytest.param(dict(owner="b", lease=NOW + 0.001), OwnedBy("b"),
                 id="a session of a node with a valid lease is owned by it"),
    pytest.param(dict(owner="b", lease=NOW + 5, expires_at=NOW - 50), OwnedBy("b"),
                 id="an owned row expires through its owner's lease, not its expires_at"),
    pytest.param(dict(owner="b", lease=NOW + 5, force_from="b"), TAKE,
                 id="a live owner that let go or did not answer in time is taken from"),
    pytest.param(dict(owner="b", lease=NOW + 5, force_from="c"), OwnedBy("b"),
                 id="forcing from another node than the owner takes nothing"),
    # owned by a node whose lease expired (killed)
    pytest.param(dict(owner="b", lease=NOW), TAKE,
                 id="a lease ending now has expired: its session is taken"),
    pytest.param(dict(owner="b", lease=NOW - 50), TAKE,
                 id="a dead node's session is taken within the window after its lease"),
    pytest.param(dict(owner="b", lease=NOW - WINDOW + 1), TAKE,
                 id="a dead node's session is taken until the window ends"),
    pytest.param(dict(owner="b", lease=NOW - WINDOW), None,
                 id="a dead node's session is gone once the window after its lease ended"),
    pytest.param(dict(owner="b", lease=NOW - 50, expires_at=NOW - 50), TAKE,
                 id="a dead node's row is taken whatever its expires_at says"),
    pytest.param(dict(owner="b", lease=None), None,
                 id="an owner without a lease row counts as expired at 0"),
    pytest.param(dict(owner="b", lease=None, now=WINDOW - 1), TAKE,
                 id="an owner without a lease row: taken within the window after 0"),
    pytest.param(
        dict(owner="b", lease=NOW - WINDOW - 10, force_from="b"), TAKE,
        id="a node asked to hand over counts as having let go, whatever its lease"),
])
def test_decide_take(row: dict[str, Any], expected: Any) -> None:
    assert take(**row) == expected


# -- decide_takes: one batch ---------------------------------------------------------------

def request(pid: str, force_from: str | None = None, namespace: str = "/") -> TakeRequest:
    return TakeRequest(namespace, pid, force_from)


ROWS: dict[tuple[str, str], tuple[str | None, float]] = {
    ("/", "free"): (None, NOW + 10),
    ("/", "expired"): (None, NOW - 10),
    ("/", "mine"): (NODE, LIVE),
    ("/", "alive"): ("b", LIVE),
    ("/", "dead"): ("dead", LIVE),
    ("/", "long-dead"): ("long-dead", LIVE),
    ("/", "ghost"): ("ghost", LIVE),  # its owner never had a lease
    ("/chat", "free"): (None, NOW + 10),
}
LEASES = {"b": NOW + 5, "dead": NOW - 5, "long-dead": NOW - WINDOW - 5, NODE: NOW + 5}


@pytest.mark.parametrize(("requests", "expected"), [
    pytest.param([], [], id="an empty batch answers nothing"),
    pytest.param([request("absent")], [None], id="a request with no stored row is None"),
    pytest.param(
        [request("free"), request("expired"), request("mine"), request("alive"),
         request("alive", force_from="b"), request("dead"), request("long-dead"),
         request("ghost")],
        [TAKE, None, MINE, OwnedBy("b"), TAKE, TAKE, None, None],
        id="each request is answered as decide_take would, in request order"),
    pytest.param([request("free"), request("free")], [TAKE, None],
                 id="of duplicates the first gets the session and the others None"),
    pytest.param([request("free"), request("free"), request("free")], [TAKE, None, None],
                 id="of many duplicates exactly one gets the session"),
    pytest.param([request("mine"), request("mine")], [MINE, None],
                 id="a row this node owns is handed out once too"),
    pytest.param([request("alive"), request("alive", force_from="b")], [OwnedBy("b"), TAKE],
                 id="a duplicate after a refusal is decided on its own"),
    pytest.param([request("alive", force_from="b"), request("alive")], [TAKE, None],
                 id="a duplicate after a take is None even where its own rule says owned"),
    pytest.param([request("expired"), request("expired")], [None, None],
                 id="an expired row is None for every duplicate"),
    pytest.param([request("free"), request("free", namespace="/chat")], [TAKE, TAKE],
                 id="one pid in two namespaces is two sessions"),
    pytest.param([request("dead"), request("free"), request("dead")], [TAKE, TAKE, None],
                 id="duplicates need not be adjacent"),
])
def test_decide_takes(requests: list[TakeRequest], expected: list[Any]) -> None:
    assert decide_takes(requests, ROWS, LEASES, node=NODE, now=NOW, window=WINDOW) \
        == expected


@pytest.mark.parametrize("key", sorted(ROWS))
def test_decide_takes_agrees_with_decide_take_for_each_row(key: tuple[str, str]) -> None:
    owner, expires_at = ROWS[key]
    for force_from in (None, "b", "dead"):
        alone = take(owner=owner, expires_at=expires_at,
                     lease=None if owner is None else LEASES.get(owner),
                     force_from=force_from)
        batch = decide_takes([request(key[1], force_from, key[0])], ROWS, LEASES,
                             node=NODE, now=NOW, window=WINDOW)
        assert batch == [alone], (key, force_from)


def test_decide_takes_reads_a_missing_lease_as_expired_at_0() -> None:
    rows = {("/", "p"): ("gone", LIVE)}
    early = decide_takes([request("p")], rows, {}, node=NODE, now=WINDOW - 1, window=WINDOW)
    late = decide_takes([request("p")], rows, {}, node=NODE, now=WINDOW, window=WINDOW)
    assert (early, late) == ([TAKE], [None])
