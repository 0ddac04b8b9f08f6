"""What only the Redis store must do: URL options, several nodes on one prefix, a lost
history, trimming, a killed follower connection, bad entries, control message order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from durable_adapter.exceptions import ConfigurationError, StoreError
from durable_adapter.stores import store_from_url
from durable_adapter.stores.base import ControlMessage
from durable_adapter.stores.redis import RedisStore, parse_url
from durable_adapter.stores.redis.follow import FOLLOW_PAGE
from tests._redis import REDIS_URL, delete_prefix, redis_prefix, store_url

from .conftest import WAIT
from .test_store_contract import Collector, bounded, packet, session, take_back

# -- configuration (no server needed) --------------------------------------------


def test_parse_url_splits_our_options_off() -> None:
    assert parse_url("redis://u:pw@h:6380/2?prefix=app&maxlen=50&block_ms=100&ssl_cert_reqs=none"
                     ) == ("redis://u:pw@h:6380/2?ssl_cert_reqs=none",
                           {"prefix": "app", "maxlen": 50, "block_ms": 100})
    assert parse_url("rediss://h") == ("rediss://h", {})


@pytest.mark.parametrize(("url", "kwargs", "message"), [
    ("redis://h?maxlen=lots", {}, "maxlen in the store URL must be a number"),
    ("redis://h?maxlen=0", {}, "maxlen must be an integer >= 1"),
    ("redis://h?prefix=a b", {}, "prefix must be"),
    ("redis://h?prefix={x}", {}, "prefix must be"),
    ("redis://h?prefix=a", {"prefix": "b"}, "prefix is given twice"),
    ("http://h", {}, "redis://"),
])
def test_bad_options_are_refused(url: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RedisStore(url, **kwargs)


def test_scheme_maps_to_the_store() -> None:
    store = store_from_url("rediss://example.org/1?prefix=app")
    assert isinstance(store, RedisStore) and store.keys.prefix == "app"
    assert "{app}" in store.keys.packets


def test_a_client_decoding_responses_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="decode_responses=False"):
        RedisStore(aioredis.Redis(decode_responses=True))


# -- with a server ----------------------------------------------------------------


@pytest.fixture
def prefix() -> Any:
    with redis_prefix() as name:
        yield name


@pytest.fixture
async def store(prefix: str) -> AsyncIterator[RedisStore]:
    instance = RedisStore(store_url(prefix), block_ms=200)
    await bounded(instance.open())
    try:
        yield instance
    finally:
        await bounded(instance.close())


async def test_unreachable_server_raises_store_error() -> None:
    store = RedisStore("redis://127.0.0.1:1/0?prefix=nowhere")
    with pytest.raises(StoreError, match="cannot reach") as caught:
        await bounded(store.open())
    assert caught.value.__cause__ is not None


async def test_a_given_client_is_used_and_never_closed(prefix: str) -> None:
    given = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with RedisStore(given, prefix=prefix) as store:
            assert await bounded(store.append(packet())) == 1
        assert await given.ping()  # still usable
        assert await given.exists(store.keys.packets) == 1
    finally:
        await given.aclose()


async def test_two_nodes_share_one_dense_history(prefix: str, store: RedisStore) -> None:
    async with RedisStore(store_url(prefix), block_ms=200) as other:
        assert other.epoch == store.epoch
        seen, seen_other = Collector(), Collector()
        await bounded(store.follow(seen, after=0))
        await bounded(other.follow(seen_other, after=0))
        seqs = await bounded(asyncio.gather(*(s.append(packet(i)) for i in range(100)
                                              for s in (store, other))))
        assert sorted(seqs) == list(range(1, 201))
        await seen.wait_for(200)
        await seen_other.wait_for(200)
        assert seen.seqs == seen_other.seqs == list(range(1, 201))
        assert [p.data for p in seen.packets] == [p.data for p in seen_other.packets]


async def test_a_lost_history_gets_a_new_epoch_above_old_cursors(
        prefix: str, store: RedisStore) -> None:
    for i in range(5):
        await bounded(store.append(packet(i)))
    old_epoch = store.epoch
    await bounded(store.save_sessions([session()]))
    seen = Collector()
    await bounded(store.follow(seen, after=5))
    assert delete_prefix(prefix) > 0  # what FLUSHALL or a restart without persistence does

    seq = await bounded(store.append(packet("new")))
    assert store.epoch != old_epoch
    assert seq > 5  # the nodes' cursors (5) stay below the new history
    bounds = await bounded(store.bounds())
    assert (bounds.epoch, bounds.top, bounds.purged_through) == (store.epoch, seq, seq - 1)
    await seen.wait_for(1)  # the follower goes on with the new history
    assert seen.seqs == [seq]
    assert await take_back(store) is None


async def test_running_nodes_follow_a_new_history_started_below_their_cursors(
        prefix: str, store: RedisStore) -> None:
    """A node opened on a wiped Redis starts the new history at seq 0; the running nodes'
    cursors are above it: they must notice the new epoch and start over, not wait
    silently until the counter passes their old position."""
    seen, resets = Collector(), []

    async def on_reset(after: int) -> None:
        resets.append((after, len(seen.packets)))

    await bounded(store.follow(seen, after=0, on_reset=on_reset))
    for i in range(5):
        await bounded(store.append(packet(i)))
    await seen.wait_for(5)
    old_epoch = store.epoch
    assert delete_prefix(prefix) > 0  # FLUSHALL, a restart without persistence
    async with RedisStore(store_url(prefix), block_ms=200) as fresh:
        assert fresh.epoch != old_epoch
        assert [await bounded(fresh.append(packet(f"new {i}"))) for i in range(8)] == list(
            range(1, 9))
        await seen.wait_for(13)
    assert seen.seqs == [1, 2, 3, 4, 5, *range(1, 9)]
    assert [p.data[1] for p in seen.packets[5:]] == [f"new {i}" for i in range(8)]
    assert resets == [(0, 5)]  # told once, before the first packet of the new history
    assert store.epoch == fresh.epoch


async def test_history_resets_under_concurrent_appends_stress(
        prefix: str, store: RedisStore) -> None:
    """Five times: the keys are wiped, a new node opens, and both nodes append at once.
    The running node's follower delivers each new history whole, in order, once."""
    seen, resets = Collector(), []

    async def on_reset(after: int) -> None:
        resets.append(after)

    await bounded(store.follow(seen, after=0, on_reset=on_reset))
    for round_ in range(5):
        delete_prefix(prefix)
        async with RedisStore(store_url(prefix), block_ms=200) as fresh:
            before = len(seen.packets)
            seqs = await bounded(asyncio.gather(*(
                node.append(packet(f"{round_}-{i}")) for i in range(20)
                for node in (store, fresh))))
            await seen.wait_for(before + 40)
            await asyncio.sleep(0.3)  # anything delivered twice would show up now
            new = seen.packets[before:]
            assert [p.seq for p in new] == sorted(seqs)
            assert len(new) == 40 and store.epoch == fresh.epoch
            assert len(resets) == round_ + 1  # told once per new history


async def test_an_entry_whose_history_check_failed_is_read_again(
        prefix: str, store: RedisStore, caplog: pytest.LogCaptureFixture) -> None:
    """The follower checks an entry of another epoch against the store; when that check
    fails (here: a key of the wrong type makes the script fail), the entry must be read
    again after the retry, not skipped."""
    seen = Collector()
    await bounded(store.follow(seen, after=0))
    await bounded(store.following.wait())
    async with RedisStore(store_url(prefix), block_ms=200) as other:
        delete_prefix(prefix)
        await bounded(other.bounds())  # a running node notices: a new history
        async with client_async() as admin:
            floor = await admin.get(store.keys.floor)
            await admin.delete(store.keys.floor)
            await admin.hset(store.keys.floor, "broken", "1")  # BOUNDS now fails
            try:
                seq = await bounded(other.append(packet("after the reset")))
                deadline = time.monotonic() + WAIT
                while not any(getattr(r, "action", "") == "follow_retry"
                              for r in caplog.records):
                    assert time.monotonic() < deadline, "the check never failed"
                    await asyncio.sleep(0.01)
            finally:
                await admin.delete(store.keys.floor)
                await admin.set(store.keys.floor, floor)
    await seen.wait_for(1)
    assert seen.seqs == [seq]


@pytest.mark.parametrize("namespace", ["/lone \ud800", "/nul \x00"])
async def test_a_namespace_that_cannot_be_stored_fails_only_its_own_emit(
        store: RedisStore, namespace: str) -> None:
    batch = [packet(i) for i in range(10)]
    batch.insert(5, packet("bad", namespace=namespace))
    results = await bounded(asyncio.gather(*(store.append(p) for p in batch),
                                           return_exceptions=True))
    assert isinstance(results.pop(5), StoreError)
    assert sorted(results) == list(range(1, 11))


async def test_deleting_stream_and_epoch_starts_a_new_history(
        prefix: str, store: RedisStore) -> None:
    for i in range(5):
        await bounded(store.append(packet(i)))
    old_epoch = store.epoch
    await bounded(store.save_sessions([session()]))
    async with client_async() as admin:
        await admin.delete(store.keys.packets, store.keys.epoch)
    # the take answers with the history as it is now: the server refuses the session's epoch
    assert await take_back(store) is not None and store.epoch != old_epoch
    bounds = await bounded(store.bounds())
    assert bounds.purged_through == bounds.top >= 5  # nothing of the old one is readable
    assert await bounded(store.read(after=0, limit=10)) == []
    assert await bounded(store.append(packet())) == bounds.top + 1


async def test_trimmed_history_moves_purged_through(prefix: str) -> None:
    async with RedisStore(store_url(prefix, maxlen=10)) as store:
        await bounded(asyncio.gather(*(store.append(packet(i)) for i in range(1000))))
        bounds = await bounded(store.bounds())
        retained = await bounded(store.read(after=0, limit=2000))
        assert bounds.top == 1000 and 0 < bounds.purged_through < 1000
        assert len(retained) < 1000
        assert [p.seq for p in retained] == list(range(bounds.purged_through + 1, 1001))


async def test_killing_the_follower_connection_loses_nothing(store: RedisStore) -> None:
    seen = Collector()
    await bounded(store.follow(seen, after=0))
    await bounded(store.following.wait())
    await bounded(store.append(packet(0)))
    await seen.wait_for(1)
    async with client_async() as admin:
        killed = await kill_clients(admin, store.follower_name)
        assert killed
        # appends while the follower is away: read from its cursor after the reconnect
        for i in range(1, 50):
            await bounded(store.append(packet(i)))
        await seen.wait_for(50)
        assert seen.seqs == list(range(1, 51))
        # one packet more: packets come in order, so a duplicate of any earlier one
        # (a re-read after the reconnect) is there before it
        await bounded(store.append(packet(50)))
        await seen.wait_for(51)
        assert seen.seqs == list(range(1, 52))
        names = {c.get("name"): c["id"] for c in await admin.client_list()}
        assert names.get(store.follower_name) not in (None, *killed)  # reconnected


async def test_follower_survives_a_bad_entry(store: RedisStore) -> None:
    seen = Collector()
    await bounded(store.follow(seen, after=0))
    await bounded(store.append(packet(1)))
    async with client_async() as admin:
        seq = await admin.incr(store.keys.top)
        await admin.xadd(store.keys.packets, {"n": "/", "p": b"junk", "t": "0", "e": store.epoch},
                         id=f"{seq}-0")
    await bounded(store.append(packet(3)))
    await seen.wait_for(2)
    assert seen.seqs == [1, 3]
    with pytest.raises(StoreError, match="cannot be decoded"):  # a replay never skips it
        await bounded(store.read(after=0, limit=10))


async def test_control_messages_keep_their_place_among_packets(
        prefix: str, store: RedisStore) -> None:
    order: list[Any] = []

    async def on_packets(packets: Any) -> None:
        order.extend(p.seq for p in packets)

    async def on_control(message: ControlMessage) -> None:
        order.append(message.method)

    await bounded(store.publish_control(ControlMessage(method="before", origin="b")))
    store.on_control(on_control)
    await bounded(store.follow(on_packets, after=0))
    async with RedisStore(store_url(prefix)) as other:
        await bounded(other.append(packet(1)))
        await bounded(other.publish_control(ControlMessage(
            method="enter_room", origin="b", body={"sid": "s", "room": b"r"}, target=None)))
        await bounded(other.append(packet(2)))
    deadline = time.monotonic() + WAIT
    while len(order) < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert order == [1, "enter_room", 2]  # and not "before": control is live only
    assert [p.seq for p in await store.read(after=0, limit=10)] == [1, 2]


async def test_failed_append_raises_store_error(store: RedisStore) -> None:
    async with client_async() as admin:
        await admin.delete(store.keys.packets)
        await admin.set(store.keys.packets, "not a stream")
        try:
            with pytest.raises(StoreError) as caught:
                await bounded(store.append(packet()))
            assert caught.value.__cause__ is not None
        finally:
            await admin.delete(store.keys.packets)


# -- helpers ----------------------------------------------------------------------


def client_async() -> aioredis.Redis:
    return aioredis.Redis.from_url(REDIS_URL)


async def kill_clients(admin: aioredis.Redis, name: str) -> list[str]:
    ids = [c["id"] for c in await admin.client_list() if c.get("name") == name]
    for client_id in ids:
        await admin.client_kill_filter(_id=client_id)
    return ids



async def test_a_handover_request_does_not_wait_behind_a_backlog(
        prefix: str, store: RedisStore) -> None:
    """A node lagging behind a long run of packets answers a handover at once."""
    order: list[Any] = []
    holding, release = asyncio.Event(), asyncio.Event()

    async def lagging(packets: Any) -> None:
        holding.set()
        await release.wait()  # the node is busy: everything below queues up
        order.extend(p.seq for p in packets)

    async def on_control(message: ControlMessage) -> None:
        order.append(message.method)

    store.on_control(on_control)
    await bounded(store.follow(lagging, after=0))
    backlog = 3 * FOLLOW_PAGE
    async with RedisStore(store_url(prefix)) as other:
        await bounded(other.append(packet(0)))
        await bounded(holding.wait())
        await bounded(asyncio.gather(*(other.append(packet(i)) for i in range(backlog))))
        await bounded(other.publish_control(ControlMessage(
            method="handover", origin="b", target=None, body={"pid_hash": "p"})))
        release.set()
        deadline = time.monotonic() + WAIT
        while len(order) < backlog + 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    assert order.index("handover") <= FOLLOW_PAGE + 1, "handed after the backlog"
    assert [x for x in order if x != "handover"] == list(range(1, backlog + 2))
