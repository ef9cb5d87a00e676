"""The Lua limit: the fixed-window counter's atomic slots, Redis's clock, repair, 429 closing,
script reloads; the window term that keeps every window-length interval within the limit.

Runs on fakeredis and on a real redis-server (the `redis` fixture)."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest
import respx
from redis.asyncio import Redis

from ratedispatch import Dispatcher
from ratedispatch.connection import connect
from ratedispatch.limits.limiter import FLIGHT_MARGIN_SECONDS
from ratedispatch.queue import Success, TakeStatus

from .conftest import API, make_settings
from .helpers import (
    add_tasks,
    counter_of,
    eventually,
    index_all,
    limiter_for,
    queue_for,
    term_state,
)
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio


async def test_takes_up_to_the_limit_then_refuses_with_the_windows_pttl(redis: Redis) -> None:
    settings = make_settings(rate_limit=3, rate_window_seconds=5)
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, *["normal"] * 5)
    await index_all(queue)
    first = await queue.take(10)
    assert first.status is TakeStatus.GRANTED and len(first.grants) == 3
    refused = await queue.take(10)
    assert refused.status is TakeStatus.FULL
    assert refused.wait is not None and 4.0 < refused.wait <= 5.0
    assert await redis.get(settings.rate_key) == b"3"
    assert 4000 < await redis.pttl(settings.rate_key) <= 5000


async def test_window_reopens_when_redis_expires_the_counter(redis: Redis) -> None:
    settings = make_settings(rate_limit=2, rate_window_seconds=0.2)
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, *["normal"] * 4)
    await index_all(queue)
    assert len((await queue.take(10)).grants) == 2

    async def reopened() -> bool:
        return (await queue.take(10)).status is TakeStatus.GRANTED

    await eventually(reopened, timeout=2, what="the next window")


async def test_a_counter_without_ttl_is_repaired_not_left_to_block_forever(redis: Redis) -> None:
    settings = make_settings(rate_limit=2, rate_window_seconds=0.3)
    queue = queue_for(settings, redis)
    await redis.set(settings.rate_key, 2)  # an operator's SET, no TTL: the window is full
    await add_tasks(redis, settings, "normal")
    await index_all(queue)
    refused = await queue.take(1)
    assert refused.status is TakeStatus.FULL
    assert 0 < await redis.pttl(settings.rate_key) <= 300

    async def granted() -> bool:
        return (await queue.take(1)).status is TakeStatus.GRANTED

    await eventually(granted, timeout=2, what="the repaired window to reopen")


async def test_a_garbage_counter_counts_as_a_full_window(redis: Redis) -> None:
    settings = make_settings(rate_limit=2, rate_window_seconds=0.3)
    queue = queue_for(settings, redis)
    await redis.set(settings.rate_key, "garbage")
    await add_tasks(redis, settings, "normal")
    await index_all(queue)
    assert (await queue.take(1)).status is TakeStatus.FULL
    assert await redis.get(settings.rate_key) == b"2"


async def test_a_429_closes_the_window_for_everyone_and_only_lengthens_it(redis: Redis) -> None:
    settings = make_settings(rate_limit=5, rate_window_seconds=1)
    limiter = limiter_for(settings, redis)
    assert await limiter.close_for(3) == 3.0
    window = await counter_of(limiter)
    assert window.full and window.used == 5
    assert window.resets_in is not None and 2.5 < window.resets_in <= 3.0
    assert await limiter.close_for(1) > 2.5  # a shorter cooldown never shortens it
    other = queue_for(make_settings(rate_limit=5, consumer="worker-b"), redis)
    await add_tasks(redis, settings, "high")
    await index_all(other)
    assert (await other.take(1)).status is TakeStatus.FULL


async def test_scripts_are_reloaded_after_script_flush(redis: Redis) -> None:
    settings = make_settings()
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, "normal", "normal")
    await index_all(queue)
    assert (await queue.take(1)).status is TakeStatus.GRANTED
    await redis.script_flush()
    assert (await queue.take(1)).status is TakeStatus.GRANTED


async def test_a_refused_worker_sleeps_until_the_window_reopens_instead_of_polling(
    redis_server: RedisServer,
) -> None:
    """Real Redis only: it counts the scripts run (INFO commandstats)."""
    client = connect(redis_server.url)
    await client.flushall()
    settings = make_settings(rate_limit=1, rate_window_seconds=1.0)
    await add_tasks(client, settings, "normal", "normal", "normal")
    calls: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return httpx.Response(200)

    await client.config_resetstat()
    with respx.mock(base_url=API) as api:
        api.route().mock(side_effect=answer)
        async with httpx.AsyncClient() as http:
            dispatcher = Dispatcher(settings, client, http)
            async with anyio.create_task_group() as tg:
                await tg.start(dispatcher.run)

                async def three_calls() -> bool:
                    return len(calls) == 3

                await eventually(three_calls, timeout=5)
                dispatcher.stop()
    stats = await client.info("commandstats")
    scripts = stats.get("cmdstat_evalsha", {}).get("calls", 0)
    await client.aclose()
    assert calls[1] - calls[0] >= 0.9 and calls[2] - calls[1] >= 0.9
    # About one take per window plus a few reads and settles: not a take every few ms.
    assert scripts < 20, f"{scripts} scripts in two windows"


async def test_a_unit_stays_busy_a_window_after_its_call_was_answered_counter_or_not(
    redis: Redis,
) -> None:
    settings = make_settings(rate_limit=2, rate_window_seconds=5)
    queue = queue_for(settings, redis)
    limiter = limiter_for(settings, redis)
    await add_tasks(redis, settings, *["normal"] * 4)
    await index_all(queue)
    first, second = (await queue.take(2)).grants
    # Answered 4.7 s and 1 s before they are acknowledged: free in 0.3 s and in 4 s.
    now = time.monotonic()
    acks = [
        Success(first.entry.id, 200, 5, 1, first.stamp, now - 4.7),
        Success(second.entry.id, 200, 5, 1, second.stamp, now - 1),
    ]
    assert await queue.ack_many(acks) == [True, True]
    await redis.delete(settings.rate_key)  # the counter's window is over (or an operator's DEL)
    term = await term_state(limiter)
    assert (await counter_of(limiter)).used == 0 and term.used == 2
    # A unit frees at most a thousandth of the window after the end of its window.
    assert term.frees_in is not None and 0.2 < term.frees_in <= 0.31
    refused = await queue.take(2)
    assert refused.status is TakeStatus.FULL
    assert refused.wait is not None and 0.2 < refused.wait <= 0.31
    await anyio.sleep(refused.wait)  # as a refused worker does
    again = await queue.take(2)
    assert again.status is TakeStatus.GRANTED and len(again.grants) == 1  # the other is busy
    assert (await term_state(limiter)).used == 2


async def test_retries_and_dead_letters_free_their_unit_a_window_after_the_answer(
    redis: Redis,
) -> None:
    settings = make_settings(rate_limit=3, rate_window_seconds=5)
    queue = queue_for(settings, redis)
    limiter = limiter_for(settings, redis)
    await add_tasks(redis, settings, *["normal"] * 3)
    await index_all(queue)
    a, b, c = (await queue.take(3)).grants
    now = time.monotonic()
    assert await queue.retry_later(a.entry.id, a.member, 0, stamp=a.stamp, answered=now - 4.8)
    assert await queue.bury(
        b.entry.id, "refused", last_status="404", attempts=1, stamp=b.stamp, answered=now - 2
    )
    # Found invalid before its call: no call was made, so its unit frees at once.
    assert await queue.bury(c.entry.id, "invalid", last_status="invalid", attempts=0, stamp=c.stamp)
    term = await term_state(limiter)
    assert term.used == 2
    assert term.frees_in is not None and 0.1 < term.frees_in <= 0.21


async def test_a_unit_whose_worker_never_answers_frees_a_window_after_the_calls_deadline(
    redis: Redis,
) -> None:
    # The call's deadline: its take, HTTP_TIMEOUT_SECONDS and a margin (FLIGHT_MARGIN_SECONDS).
    settings = make_settings(rate_limit=1, rate_window_seconds=0.5, http_timeout_seconds=0.3)
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, "normal", "normal")
    await index_all(queue)
    taken = time.monotonic()
    assert len((await queue.take(1)).grants) == 1  # and its worker dies: no answer, ever
    # A call in flight may yet be answered now, and free its unit a window from now: a
    # refused worker looks again then, not at the deadline.
    refused = await queue.take(1)
    assert refused.status is TakeStatus.FULL
    assert refused.wait is not None and 0.45 < refused.wait <= 0.5

    async def granted() -> bool:
        return (await queue.take(1)).status is TakeStatus.GRANTED

    await eventually(granted, timeout=5, what="the dead worker's unit to free")
    deadline = settings.http_timeout_seconds + FLIGHT_MARGIN_SECONDS
    # Less a ms: the scripts read Redis's clock in whole ms.
    assert time.monotonic() - taken >= deadline + settings.rate_window_seconds - 0.001


async def test_a_dead_workers_unit_stays_busy_when_nobody_took_since(redis: Redis) -> None:
    settings = make_settings(rate_limit=1, rate_window_seconds=0.5, http_timeout_seconds=0.1)
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, "normal", "normal")
    await index_all(queue)
    assert len((await queue.take(1)).grants) == 1  # and its worker dies
    # Past its deadline (0.35 s), with no take meanwhile: the first take after it finds the
    # call gone from the flight, and its unit busy until a window after the deadline.
    await anyio.sleep(FLIGHT_MARGIN_SECONDS + 0.2)  # time passing is the point
    refused = await queue.take(1)
    assert refused.status is TakeStatus.FULL
    assert refused.wait is not None and 0.2 < refused.wait <= 0.5
