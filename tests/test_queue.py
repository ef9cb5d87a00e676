"""Ownership of entries: global priority, exclusive claims, reclaiming only the dead.

Runs on fakeredis and on a real redis-server (the `redis` fixture)."""

from __future__ import annotations

import time

import anyio
import pytest
from redis.asyncio import Redis

from ratedispatch.guard import RedisGuard
from ratedispatch.queue import Queue, Success, TakeStatus, read_stream

from .conftest import make_settings
from .helpers import (
    add_tasks,
    consumers_for,
    counter_of,
    fresh_read,
    index_all,
    limiter_for,
    queue_for,
)

pytestmark = pytest.mark.anyio


async def test_priority_is_global_then_oldest_first(redis: Redis) -> None:
    settings = make_settings()
    reader = queue_for(settings, redis)
    ids = await add_tasks(redis, settings, "low", "normal", "high", "low", "high", "normal")
    await index_all(reader)
    # A different worker takes: the order is the index's, not the reader's batch.
    taker = queue_for(make_settings(consumer="worker-b"), redis)
    order = []
    for _ in ids:
        take = await taker.take(1)
        order += [g.entry.id for g in take.grants]
    assert order == [ids[2], ids[4], ids[1], ids[5], ids[0], ids[3]]
    assert (await taker.take(1)).status is TakeStatus.EMPTY


async def test_order_within_a_priority_is_exact_across_ids_in_one_millisecond(redis: Redis) -> None:
    settings = make_settings()
    queue = queue_for(settings, redis)
    ids = [f"1700000000000-{seq}" for seq in (2, 9, 10, 11, 100)]
    for entry_id in ids:
        await redis.xadd(settings.stream, {"endpoint": "/x"}, id=entry_id)
    await index_all(queue)
    taken = [g.entry.id for g in (await queue.take(10)).grants]
    assert taken == ids


async def test_two_workers_never_take_the_same_entry(redis: Redis) -> None:
    settings = make_settings(rate_limit=1000)
    a = queue_for(settings, redis)
    b = queue_for(make_settings(rate_limit=1000, consumer="worker-b"), redis)
    await add_tasks(redis, settings, *["normal"] * 60)
    await index_all(a)
    taken: list[str] = []

    async def drain(queue: object) -> None:

        assert isinstance(queue, Queue)
        while (take := await queue.take(3)).status is TakeStatus.GRANTED:
            taken.extend(g.entry.id for g in take.grants)

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, a)
        tg.start_soon(drain, b)
    assert len(taken) == 60 and len(set(taken)) == 60


async def test_waiting_entries_are_never_reclaimed_but_a_dead_workers_are(redis: Redis) -> None:
    settings = make_settings()
    dead = queue_for(make_settings(consumer="dead-worker"), redis)
    live = consumers_for(settings, redis)
    ids = await add_tasks(redis, settings, "normal", "normal", "normal")
    await index_all(dead)
    in_flight = await dead.take(1)  # the dead worker took one, then died
    assert in_flight.grants[0].entry.id == ids[0]
    await anyio.sleep(0.15)  # let 150 ms of idle time pass (time passing is the point here)
    stale = await live.stale_ids(100, 100)
    assert stale == [ids[0]]  # the two waiting in the index are not "stale"
    entries, dropped = await live.reclaim(stale, 100)
    assert [e.id for e in entries] == [ids[0]] and dropped == 0
    assert entries[0].fields[b"endpoint"] == b"/t/0"


async def test_a_live_workers_fresh_claim_is_not_reclaimed(redis: Redis) -> None:
    settings = make_settings()
    a = queue_for(settings, redis)
    b = consumers_for(make_settings(consumer="worker-b"), redis)
    await add_tasks(redis, settings, "normal")
    await index_all(a)
    await anyio.sleep(0.15)  # the entry idles in the index...
    await a.take(1)  # ...then a live worker claims it for its call: idle time resets
    assert await b.stale_ids(100, 100) == []
    [entry_id] = [e.id for e in await read_stream(redis, settings.stream)]
    entries, _ = await b.reclaim([entry_id], 100)
    assert entries == []  # XCLAIM's min-idle-time guards it even if asked directly


async def test_trimmed_entries_are_acknowledged_and_forgotten(redis: Redis) -> None:
    settings = make_settings()
    dead = queue_for(make_settings(consumer="dead-worker"), redis)
    live = consumers_for(settings, redis)
    await add_tasks(redis, settings, "normal", "normal")
    await index_all(dead)
    grants = (await dead.take(2)).grants
    await redis.xtrim(settings.stream, maxlen=0)  # an operator trims under pending entries
    await anyio.sleep(0.15)
    stale = await live.stale_ids(100, 100)
    entries, dropped = await live.reclaim(stale, 100)
    assert (entries, dropped) == ([], 2)
    assert await redis.xpending(settings.stream, settings.group) in (
        {"pending": 0, "min": None, "max": None, "consumers": []},
    )
    assert len(grants) == 2


async def test_settling_an_entry_that_is_no_longer_ours_does_nothing(redis: Redis) -> None:
    settings = make_settings(results_stream="results")
    a = queue_for(settings, redis)
    settings_b = make_settings(consumer="worker-b", results_stream="results")
    b = consumers_for(settings_b, redis)
    await add_tasks(redis, settings, "normal")
    await index_all(a)
    grant = (await a.take(1)).grants[0]
    await anyio.sleep(0.15)
    entries, _ = await b.reclaim(await b.stale_ids(100, 10), 100)  # a was presumed dead
    assert len(entries) == 1
    assert await a.ack_many([Success(grant.entry.id, 200, 5, 1, grant.stamp)]) == [False]
    assert await redis.xlen("results") == 0
    assert await queue_for(settings_b, redis).ack_many(
        [Success(grant.entry.id, 200, 5, 1, grant.stamp)]
    ) == [True]
    assert await redis.xlen("results") == 1


async def test_when_nothing_waits_a_drained_read_gets_its_slots_in_the_same_step(
    redis: Redis,
) -> None:
    settings = make_settings(rate_limit=2)
    queue = queue_for(settings, redis)
    limiter = limiter_for(settings, redis)
    ids = await add_tasks(redis, settings, "low", "high", "normal")
    take = await queue.take(3, await fresh_read(queue, 10), drained=True)
    assert take.fast and take.status is TakeStatus.GRANTED
    # The best two of the batch get the window's two slots; the third waits in the index.
    assert [(g.entry.id, g.attempt) for g in take.grants] == [(ids[1], 1), (ids[2], 1)]
    assert await queue.index_size() == 1 and (await queue.take(1)).status is TakeStatus.FULL
    assert (await counter_of(limiter)).used == 2


async def test_fresh_entries_queue_behind_waiting_ones_of_higher_priority(redis: Redis) -> None:
    settings = make_settings()
    queue = queue_for(settings, redis)
    [high] = await add_tasks(redis, settings, "high")
    await index_all(queue)
    later = await add_tasks(redis, settings, "low", "normal")
    take = await queue.take(2, await fresh_read(queue, 10), drained=True)
    assert not take.fast
    assert [g.entry.id for g in take.grants] == [high, later[1]]
    assert [g.attempt for g in take.grants] == [1, 1]


async def test_a_read_that_left_more_unread_gives_no_slot_away_until_that_is_indexed(
    redis: Redis,
) -> None:
    settings = make_settings(rate_limit=3)
    queue = queue_for(settings, redis)
    limiter = limiter_for(settings, redis)
    ids = await add_tasks(redis, settings, "low", "low", "high", "high", "high")
    # Two read, three unread: those may be better and do not fit in the window with these.
    take = await queue.take(2, await fresh_read(queue, 2), drained=False)
    assert take.status is TakeStatus.EMPTY and not take.grants
    assert (await counter_of(limiter)).used == 0
    take = await queue.take(3, await fresh_read(queue, 10), drained=True)
    assert [g.entry.id for g in take.grants] == ids[2:]


async def test_a_partial_read_is_called_at_once_when_everything_unread_fits_the_window(
    redis: Redis,
) -> None:
    settings = make_settings(rate_limit=100)
    queue = queue_for(settings, redis)
    ids = await add_tasks(redis, settings, *["normal"] * 5)
    take = await queue.take(2, await fresh_read(queue, 2), drained=False)
    assert take.fast and [g.entry.id for g in take.grants] == ids[:2]


async def test_attempts_are_the_delivery_count_across_retries(redis: Redis) -> None:
    settings = make_settings()
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, "normal")
    await index_all(queue)
    attempts = []
    for _ in range(3):
        [grant] = (await queue.take(1)).grants
        attempts.append(grant.attempt)
        answered = time.monotonic()
        assert await queue.retry_later(
            grant.entry.id, grant.member, 0, stamp=grant.stamp, answered=answered
        )
    assert attempts == [1, 2, 3]


async def test_nothing_is_reclaimed_until_redis_has_been_back_for_the_idle_time(
    redis: Redis,
) -> None:
    settings = make_settings()
    a = queue_for(settings, redis)
    b_guard = RedisGuard(settings.redis_url)
    b = consumers_for(make_settings(consumer="worker-b"), redis, b_guard)
    await add_tasks(redis, settings, "normal")
    await index_all(a)
    [grant] = (await a.take(1)).grants
    await anyio.sleep(0.15)
    stale = await b.stale_ids(100, 10)
    assert stale == [grant.entry.id]
    failures = iter([ConnectionError("connection reset")])

    async def flaky() -> None:
        for failure in failures:
            raise failure

    # An outage this worker rode out (its guard retried through it): a's entry looks idle only
    # because Redis counted the downtime, so it stays a's for the idle time after the outage.
    await b_guard.run(flaky, "a step that met the outage")
    assert await b.reclaim(stale, 100) == ([], 0)
    assert await a.ack_many([Success(grant.entry.id, 200, 5, 1, grant.stamp)]) == [True]


async def test_a_reader_with_more_unread_keeps_its_entries_out_of_the_index_until_it_has_all(
    redis: Redis,
) -> None:
    settings = make_settings(rate_limit=3)
    a = queue_for(settings, redis)
    b = queue_for(make_settings(consumer="worker-b", rate_limit=3), redis)
    ids = await add_tasks(redis, settings, "low", "low", "high", "high", "high")
    # Reader a read two of five (the lows) and can read on at once: it keeps them back.
    first = await fresh_read(a, 2)
    take = await a.take(2, first, drained=False, keep=True)
    assert take.status is TakeStatus.READ_ON and not take.grants
    # Meanwhile another worker's take finds nothing to give a slot to, rather than the lows.
    assert (await b.take(3)).status is TakeStatus.EMPTY
    assert await a.index_size() == 0 and (await counter_of(limiter_for(settings, redis))).used == 0
    # The kept entries come back with the rest: the best three get the window's slots.
    take = await a.take(3, first + await fresh_read(a, 10), drained=True)
    assert [g.entry.id for g in take.grants] == ids[2:]
    assert await a.index_size() == 2
