"""Several limit terms at once, paced terms, MAX_IN_FLIGHT and costs: each judged as the API sees
the calls (a call counts from its take until well after its answer).

Runs on fakeredis and on a real redis-server (the `redis` fixture)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
import pytest
import respx
from redis.asyncio import Redis

from ratedispatch import build_entry, enqueue
from ratedispatch.devtools.audit import busiest, fullest_bucket
from ratedispatch.limits.limiter import FLIGHT_MARGIN_SECONDS, TermState
from ratedispatch.ops.status import collect, render
from ratedispatch.queue import Grant, Success, TakeStatus
from ratedispatch.queue.entries import as_text

from .conftest import API, make_settings
from .helpers import (
    add_tasks,
    count_is,
    counter_of,
    eventually,
    fields_of,
    fresh_read,
    index_all,
    limiter_for,
    queue_for,
    running,
)

pytestmark = pytest.mark.anyio


def answered(grants: Sequence[Grant], seconds_ago: float = 0.0) -> list[Success]:
    at = time.monotonic() - seconds_ago
    return [Success(g.entry.id, 200, 1, g.attempt, g.stamp, at, g.cost) for g in grants]


async def add_costly(redis: Redis, stream: str, *costs: tuple[str, int]) -> list[str]:
    return [
        await enqueue(redis, stream, build_entry(f"/c/{i}", priority=priority, cost=cost))
        for i, (priority, cost) in enumerate(costs)
    ]


async def test_a_take_records_the_successes_before_it_and_their_calls_count_from_the_answer(
    redis: Redis,
) -> None:
    settings = make_settings(limits="2/1s", max_in_flight=2)
    queue = queue_for(settings, redis)
    other = queue_for(make_settings(limits="2/1s", max_in_flight=2, consumer="b"), redis)
    await add_tasks(redis, settings, *["normal"] * 4)
    await index_all(queue)
    first = await queue.take(2)
    assert len(first.grants) == 2 and (await queue.take(2)).status is TakeStatus.FULL
    lost, kept = first.grants
    await redis.xclaim(settings.stream, settings.group, "b", 0, [lost.entry.id])  # taken over
    # The successes leave the flight (MAX_IN_FLIGHT has room again) but stay busy in the window
    # term from their answer: the same script records them and finds no room.
    take = await queue.take(2, successes=answered(first.grants))
    assert take.recorded == [False, True]
    assert take.status is TakeStatus.FULL and take.wait is not None and 0.9 < take.wait <= 1.01
    assert [row["id"] for row in await fields_of(redis, settings.results_stream)] == [kept.entry.id]
    held: Any = await redis.xpending_range(settings.stream, settings.group, "-", "+", 10)
    owners = {as_text(row["message_id"]): as_text(row["consumer"]) for row in held}
    assert kept.entry.id not in owners  # acknowledged
    assert owners[lost.entry.id] == "b"  # its new owner's to record
    assert (await other.take(2)).status is TakeStatus.FULL


async def test_a_call_starts_only_when_every_term_has_room(redis: Redis) -> None:
    settings = make_settings(limits="3/500ms, 5/2s")
    queue = queue_for(settings, redis)
    limiter = limiter_for(settings, redis)
    await add_tasks(redis, settings, *["normal"] * 8)
    await index_all(queue)
    first = await queue.take(10)
    assert len(first.grants) == 3  # all the 500 ms term allows
    assert await queue.ack_many(answered(first.grants)) == [True] * 3
    refused = await queue.take(10)
    assert refused.status is TakeStatus.FULL
    assert refused.wait is not None and 0.45 < refused.wait <= 0.51
    await anyio.sleep(refused.wait)  # as a refused worker does
    second = await queue.take(10)
    assert len(second.grants) == 2  # all the 2 s term has left
    assert await queue.ack_many(answered(second.grants)) == [True] * 2
    refused = await queue.take(10)
    # The 2 s term frees first when the first three answers are 2 s old: 1.5 s from now.
    assert refused.status is TakeStatus.FULL
    assert refused.wait is not None and 1.3 < refused.wait <= 1.51
    terms = (await limiter.state()).terms
    assert [(t.term, t.used, t.limit) for t in terms] == [("3/500ms", 2, 3), ("5/2s", 5, 5)]
    # The first N/D term keeps the fixed-window counter at RATE_KEY.
    assert (await counter_of(limiter)).used == 2


async def test_a_paced_term_gives_its_burst_then_one_call_every_d_over_n(redis: Redis) -> None:
    settings = make_settings(limits="10/1s burst 2")
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, *["normal"] * 5)
    await index_all(queue)
    first = await queue.take(10)
    assert len(first.grants) == 2
    await queue.ack_many(answered(first.grants))
    refused = await queue.take(10)
    # Its next emission: one unit drains every 100 ms. A sleep until then, not a poll (and a
    # ms more: an answer counts from a ms after it was measured, both in whole ms).
    assert refused.status is TakeStatus.FULL
    assert refused.wait is not None and 0.09 < refused.wait <= 0.102
    await anyio.sleep(refused.wait)
    assert len((await queue.take(10)).grants) == 1
    assert not await redis.exists(settings.rate_key)  # no N/D term: no counter


async def test_a_paced_term_counts_a_call_in_flight_until_its_answer(redis: Redis) -> None:
    settings = make_settings(limits="10/1s burst 2")
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, *["normal"] * 5)
    await index_all(queue)
    first = await queue.take(10)
    assert len(first.grants) == 2
    # Not answered yet: the API may see both calls at any moment, so the bucket stays full,
    # where a GCRA that counted them at their take would have drained it by now.
    await anyio.sleep(0.3)  # time passing is the point
    assert (await queue.take(10)).status is TakeStatus.FULL
    # Answered 0.25 s ago: drained since (two units take 0.2 s).
    await queue.ack_many(answered(first.grants, seconds_ago=0.25))
    assert len((await queue.take(10)).grants) == 2


async def test_max_in_flight_caps_the_calls_in_flight_across_workers(redis: Redis) -> None:
    a = queue_for(make_settings(max_in_flight=2), redis)
    b = queue_for(make_settings(max_in_flight=2, consumer="worker-b"), redis)
    limiter = limiter_for(make_settings(max_in_flight=2), redis)
    await add_tasks(redis, make_settings(), *["normal"] * 5)
    await index_all(a)
    first = await a.take(5)
    assert len(first.grants) == 2
    refused = await b.take(5)
    assert refused.status is TakeStatus.FULL and refused.wait == 0.005  # a call may end any time
    assert (await limiter.state()).terms[-1] == TermState("max_in_flight", 2, 2, None)
    await a.ack_many(answered(first.grants[:1]))
    assert len((await b.take(5)).grants) == 1


async def test_a_dead_workers_calls_leave_the_flight_after_their_deadline(redis: Redis) -> None:
    settings = make_settings(max_in_flight=1, http_timeout_seconds=0.2)
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, "normal", "normal")
    await index_all(queue)
    taken = time.monotonic()
    assert len((await queue.take(1)).grants) == 1  # and its worker dies

    async def granted() -> bool:
        return (await queue.take(1)).status is TakeStatus.GRANTED

    await eventually(granted, timeout=5, what="the dead worker's call to leave the flight")
    elapsed = time.monotonic() - taken
    deadline = settings.http_timeout_seconds + FLIGHT_MARGIN_SECONDS
    assert deadline - 0.001 <= elapsed < deadline + 1.0


async def test_a_call_counts_its_cost_in_every_term_and_keeps_its_place(redis: Redis) -> None:
    settings = make_settings(limits="5/1s, 8/2s")
    queue = queue_for(settings, redis)
    limiter = limiter_for(settings, redis)
    ids = await add_costly(redis, settings.stream, ("high", 3), ("normal", 3), ("low", 1))
    await index_all(queue)
    take = await queue.take(10)
    # 3 of 5 used: the next best costs 3 and does not fit, and the cheap low task behind it
    # is not called before it.
    assert [g.entry.id for g in take.grants] == [ids[0]]
    assert [g.cost for g in take.grants] == [3]
    assert (await counter_of(limiter)).used == 3
    assert [t.used for t in (await limiter.state()).terms] == [3, 3]
    refused = await queue.take(10)
    assert refused.status is TakeStatus.FULL


async def test_a_cost_no_term_can_grant_is_dead_lettered_without_a_call(redis: Redis) -> None:
    settings = make_settings(limits="5/1s, 20/1m")
    await add_costly(redis, settings.stream, ("normal", 6))
    # Indexed by a worker with larger limits: a worker with these hands it over uncharged.
    await add_costly(redis, settings.stream, ("high", 7))
    bigger = make_settings(limits="50/1s", consumer="worker-big")
    await index_all(queue_for(bigger, redis))
    await add_costly(redis, settings.stream, ("normal", 2))
    with respx.mock(base_url=API) as api:
        route = api.route().respond(200)
        async with running(settings, redis):
            await count_is(redis, settings.results_stream, 3)
    assert [str(call.request.url.path) for call in route.calls] == ["/c/0"]
    reasons = sorted(
        letter["reason"] for letter in await fields_of(redis, settings.dead_letter_stream)
    )
    assert len(reasons) == 2
    assert all("more than the term 5/1s can ever grant" in reason for reason in reasons)
    assert "cost 6" in reasons[0] and "cost 7" in reasons[1]


async def test_waiting_for_room_spends_no_attempt(redis: Redis) -> None:
    settings = make_settings(rate_limit=1, rate_window_seconds=0.1)
    await add_tasks(redis, settings, *["normal"] * 21)
    calls: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return httpx.Response(200)

    with respx.mock(base_url=API) as api:
        api.route().mock(side_effect=answer)
        async with running(settings, redis):
            await count_is(redis, settings.results_stream, 21)
    # The last task waited through 20 full windows, and its one call was its first attempt.
    assert calls[-1] - calls[0] >= 20 * 0.1 - 0.01
    results = await fields_of(redis, settings.results_stream)
    assert {(r["status"], r["attempts"]) for r in results} == {("ok", "1")}


async def test_every_term_holds_as_the_api_sees_the_calls(redis: Redis) -> None:
    settings = make_settings(limits="20/1s burst 3, 4/200ms, 12/1s", concurrency=8)
    await add_tasks(redis, settings, *["normal"] * 30)
    arrivals: list[float] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        arrivals.append(time.monotonic())
        await anyio.sleep(0.01)  # some of each call is the API's own time
        return httpx.Response(200)

    with respx.mock(base_url=API) as api:
        api.route().mock(side_effect=answer)
        async with running(settings, redis):
            await count_is(redis, settings.results_stream, 30)
    assert len(arrivals) == 30
    assert busiest(arrivals, 0.2) <= 4 and busiest(arrivals, 1.0) <= 12
    assert fullest_bucket(arrivals, 20) <= 3.01
    # 30 calls at 12 a second: the third second's calls go once the first second's are 1 s old.
    assert arrivals[-1] - arrivals[0] >= 2.0


async def test_a_429_closes_a_paced_term_too(redis: Redis) -> None:
    settings = make_settings(limits="10/1s burst 5")
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, "normal")
    await index_all(queue)
    assert await limiter_for(settings, redis).close_for(0.3) == 0.3
    refused = await queue.take(1)
    # Nothing before the cooldown ends, then one at a time: 0.3 s, not an instant burst.
    assert refused.status is TakeStatus.FULL
    assert refused.wait is not None and 0.29 < refused.wait <= 0.3


async def test_a_long_terms_state_stays_small_however_many_calls(redis: Redis) -> None:
    count = 2000
    settings = make_settings(limits="100000/1d", concurrency=count)
    queue = queue_for(settings, redis)
    limiter = limiter_for(settings, redis)
    await add_tasks(redis, settings, *["normal"] * count)
    await index_all(queue)
    grants = (await queue.take(count)).grants
    assert len(grants) == count
    # Answered over the whole last day: each in its own ms, yet the day is a thousand buckets.
    now = time.monotonic()
    spread = [
        Success(g.entry.id, 200, 1, 1, g.stamp, now - i * 86_000 / count)
        for i, g in enumerate(grants)
    ]
    for start in range(0, count, 500):
        await queue.ack_many(spread[start : start + 500])
    assert (await limiter.state()).terms[0].used == count
    assert await redis.hlen(settings.rate_key + ":terms") <= 1000 + 10


async def test_status_and_metrics_show_every_term(redis: Redis) -> None:
    settings = make_settings(limits="10/1s burst 2, 600/1m", max_in_flight=4)
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, *["normal"] * 3)
    await index_all(queue)
    assert len((await queue.take(3)).grants) == 2
    status = await collect(redis, settings)
    assert [(t.term, t.used, t.limit) for t in status.terms] == [
        ("10/1s burst 2", 2, 2),
        ("600/1m", 2, 600),
        ("max_in_flight", 2, 4),
    ]
    assert status.calls_in_flight == 2 and status.window_used == 2
    terms = json.loads(status.to_json())["terms"]
    assert terms[1] == {"term": "600/1m", "used": 2, "limit": 600, "frees_in": 60.0}
    text = render(status)
    assert "limits   10/1s burst 2  2/2 busy" in text
    assert "600/1m         2/600 busy, the next frees in 60.0s" in text
    assert "max_in_flight  2/4 in flight" in text


async def test_the_units_in_flight_are_counted_afresh_after_an_operators_edit(
    redis: Redis,
) -> None:
    settings = make_settings(limits="4/1s")
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, *["normal"] * 6)
    await index_all(queue)
    assert len((await queue.take(4)).grants) == 4  # in flight
    # The sum of units in flight lost (as if the hash were deleted), and its next check due:
    # the calls in flight are counted again from the flight itself.
    await redis.hset(f"{settings.rate_key}:terms", "calls", "0:1:0")  # units:due:ttl_at
    assert (await queue.take(2)).status is TakeStatus.FULL
    assert (await limiter_for(settings, redis).state()).units_in_flight == 4


async def test_an_answer_whose_call_left_the_flight_never_loosens_a_term(redis: Redis) -> None:
    settings = make_settings(limits="10/2s", http_timeout_seconds=0.1)
    queue = queue_for(settings, redis)
    limiter = limiter_for(settings, redis)
    await add_tasks(redis, settings, *["normal"] * 3)
    await index_all(queue)
    late = (await queue.take(1)).grants  # its answer comes after its deadline
    await anyio.sleep(FLIGHT_MARGIN_SECONDS + 0.15)  # time passing is the point
    on_time = (await queue.take(1)).grants  # this take also finds the late call expired
    assert (await limiter.state()).units_in_flight == 1
    # One batch: the late call counted already (at its deadline), the other not yet. Which is
    # which is not known to the script: both count, the late one twice; one unit leaves.
    assert await queue.ack_many(answered(late + on_time)) == [True, True]
    state = await limiter.state()
    assert state.units_in_flight == 0 and state.terms[0].used == 3
    # Sent again (its reply lost): nothing left in the flight, nothing counted again.
    await queue.ack_many(answered(on_time))
    assert (await limiter.state()).terms[0].used == 3


async def test_a_short_429_does_not_close_the_fleet_for_a_long_window(redis: Redis) -> None:
    settings = make_settings(limits="5/1m")  # the counter's window lasts a minute
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, *["normal"] * 3)
    await index_all(queue)
    assert len((await queue.take(1)).grants) == 1
    assert await limiter_for(settings, redis).close_for(0.3) == 0.3
    refused = await queue.take(1)
    assert refused.status is TakeStatus.FULL
    assert refused.wait is not None and 0.25 < refused.wait <= 0.3
    await anyio.sleep(refused.wait)  # as a refused worker does
    assert len((await queue.take(1)).grants) == 1


async def test_a_costly_task_read_later_is_not_passed_over_once_its_cost_was_met(
    redis: Redis,
) -> None:
    settings = make_settings(limits="20/1m")
    queue = queue_for(settings, redis)
    await add_costly(redis, settings.stream, ("normal", 10))
    first = await queue.take(1, await fresh_read(queue, 1), drained=True)
    assert [g.cost for g in first.grants] == [10]  # 10 of 20 left, and a cost of 10 was met
    low, high = await add_costly(redis, settings.stream, ("low", 1), ("high", 10))
    # The reader read only the cheap low task: the costly high one, unread, may cost as much
    # as the costliest met, which would not fit beside it: so nothing is called before it.
    kept = await fresh_read(queue, 1)
    assert [entry.id for entry, _ in kept] == [low]
    read = await queue.take(1, kept, keep=True)
    assert read.status is TakeStatus.READ_ON and not read.grants
    take = await queue.take(2, kept + await fresh_read(queue, 2), drained=True)
    assert [g.entry.id for g in take.grants] == [high]


async def test_a_task_not_called_after_all_goes_back_without_spending_an_attempt(
    redis: Redis,
) -> None:
    """A take that comes back after HTTP_TIMEOUT_SECONDS (a stalled worker) is not called."""
    settings = make_settings()
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, "normal")
    await index_all(queue)
    [grant] = (await queue.take(1)).grants
    assert grant.attempt == 1
    assert await queue.retry_later(
        grant.entry.id, grant.member, 0, stamp=grant.stamp, answered=None
    )
    [again] = (await queue.take(1)).grants
    assert again.entry.id == grant.entry.id and again.attempt == 1
    assert (await limiter_for(settings, redis).state()).terms[0].used == 1  # the one in flight
