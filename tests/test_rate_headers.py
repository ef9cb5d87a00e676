"""What the API announces steers the fleet (RATEDISPATCH_RATE_HEADERS, CONTRACT §9): obey keeps
every worker to "r remain until t" less the calls in flight, carries a stated quota into the
windows after t, and never loosens on a stale word; observe only shows it; RATE_ADAPT lowers the
limits after 429s and raises them back after success.

Runs on fakeredis and on a real redis-server (the `redis` fixture)."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from ratedispatch.headers import Announcement, Quota
from ratedispatch.keys import Keys
from ratedispatch.limits.limiter import Limiter
from ratedispatch.ops.status import collect
from ratedispatch.queue import Grant, Queue, Success, TakeStatus
from ratedispatch.settings import Settings
from ratedispatch.worker.heard import flight_member

from .conftest import make_settings
from .helpers import add_tasks, eventually, index_all, limiter_for, queue_for

pytestmark = pytest.mark.anyio


async def backlog(redis: Redis, n: int, **overrides: Any) -> tuple[Settings, Queue, Limiter]:
    settings = make_settings(**overrides)
    queue = queue_for(settings, redis)
    await add_tasks(redis, settings, *["normal"] * n)
    await index_all(queue)
    return settings, queue, limiter_for(settings, redis)


async def taken(queue: Queue, want: int) -> list[Grant]:
    reply = await queue.take(want)
    return list(reply.grants) if reply.status is TakeStatus.GRANTED else []


async def say(
    limiter: Limiter,
    grant: Grant,
    remaining: int | None,
    reset: float | None,
    *quotas: Quota,
) -> Any:
    """What `grant`'s response said, recorded as a worker records it."""
    member = flight_member(grant.entry.id, grant.stamp, grant.cost)
    heard, _ = await limiter.announce(
        Announcement(remaining, reset, quotas), as_of=grant.stamp, member=member, ago=0.0
    )
    return heard


async def answered(queue: Queue, grants: list[Grant]) -> None:
    await queue.ack_many([Success(g.entry.id, 200, 1, 1, g.stamp) for g in grants])


async def test_the_fleet_starts_what_remains_less_the_calls_in_flight(redis: Redis) -> None:
    _, queue, limiter = await backlog(redis, 20, limits="100/1s")
    first = await taken(queue, 4)
    assert len(first) == 4
    # The first call's answer: 6 remain for 5 s. Three more calls of ours are in flight, which
    # the API may not have counted: the fleet may start 3 more.
    heard = await say(limiter, first[0], 6, 5.0)
    assert (heard.remaining, heard.left) == (6, 3)
    assert len(await taken(queue, 10)) == 3
    refused = await queue.take(10)
    assert refused.status is TakeStatus.FULL
    assert refused.wait is not None and 4.0 < refused.wait <= 5.0
    # Another worker, started later, keeps to it too.
    later = queue_for(make_settings(limits="100/1s", consumer="late"), redis)
    assert (await later.take(10)).status is TakeStatus.FULL


async def test_a_stale_announcement_never_loosens_it(redis: Redis) -> None:
    _, queue, limiter = await backlog(redis, 20, limits="100/1s")
    early = await taken(queue, 1)
    late = await taken(queue, 1)
    await answered(queue, early + late)
    heard = await say(limiter, late[0], 2, 5.0)
    assert heard.left == 2
    # The earlier call's answer arrives after: it says more remain, as it would.
    heard = await say(limiter, early[0], 9, 5.0)
    assert (heard.remaining, heard.left) == (2, 2)
    # An earlier answer that says fewer remain tightens it.
    heard = await say(limiter, early[0], 1, 5.0)
    assert heard.left == 1
    assert len(await taken(queue, 10)) == 1


async def test_what_the_api_announces_never_allows_more_than_limits(redis: Redis) -> None:
    _, queue, limiter = await backlog(redis, 10, limits="3/5s")
    first = await taken(queue, 1)
    await say(limiter, first[0], 1000, 1.0, Quota(1000, 1.0))
    assert len(await taken(queue, 10)) == 2


async def test_past_the_reset_a_probe_goes_first_and_its_word_frees_the_rest(
    redis: Redis,
) -> None:
    _, queue, limiter = await backlog(redis, 20, limits="100/1s")
    first = await taken(queue, 1)
    await answered(queue, first)
    await say(limiter, first[0], 0, 0.3)
    assert (await queue.take(10)).status is TakeStatus.FULL
    probe: list[Grant] = []

    async def reset() -> bool:
        probe.extend(await taken(queue, 10))
        return bool(probe)

    await eventually(reset, timeout=2, what="the API's reset")
    assert len(probe) == 1  # the next window's first call goes alone
    assert (await queue.take(10)).status is TakeStatus.FULL
    heard = await say(limiter, probe[0], 4, 5.0)
    assert heard.left == 4  # the probe was answered: no other call is in flight
    assert len(await taken(queue, 10)) == 4


async def test_a_probe_without_word_lets_the_fleet_go_on(redis: Redis) -> None:
    _, queue, limiter = await backlog(redis, 20, limits="100/1s")
    first = await taken(queue, 1)
    await answered(queue, first)
    await say(limiter, first[0], 0, 0.2)
    got: list[Grant] = []

    async def more_than_a_probe() -> bool:
        got.extend(await taken(queue, 10))
        return len(got) > 1

    # The probe's call never says anything (a failure, an API that stopped announcing): the
    # rest go once it has waited a little, not never.
    await eventually(more_than_a_probe, timeout=2, what="the fleet after a silent probe")
    assert len(got) == 11


async def test_a_stated_quota_is_carried_into_the_next_windows(redis: Redis) -> None:
    _, queue, limiter = await backlog(redis, 30, limits="100/1s")
    first = await taken(queue, 1)
    await answered(queue, first)
    # 0 remain until the reset in 0.2 s; the API's quota is 3 per 0.5 s.
    heard = await say(limiter, first[0], 0, 0.2, Quota(3, 0.5))
    assert [str(q) for q in heard.quotas] == ["3/500ms"]
    got: list[Grant] = []

    async def window_opened() -> bool:
        got.extend(await taken(queue, 10))
        return bool(got)

    await eventually(window_opened, timeout=2, what="the reset")
    # At most 3 start in the 0.5 s after the reset, not the 100 LIMITS allows.
    await answered(queue, got)
    assert len(got) <= 3
    assert len(await taken(queue, 10)) + len(got) <= 3
    status = await limiter.state()
    assert [t.term for t in status.carried] == ["api 3/500ms"]
    assert status.carried[0].limit == 3


async def test_a_quota_without_a_window_lasts_as_long_as_its_longest_reset(
    redis: Redis,
) -> None:
    _, queue, limiter = await backlog(redis, 10, limits="100/1s")
    grants = [*await taken(queue, 1), *await taken(queue, 1), *await taken(queue, 1)]
    heard = await say(limiter, grants[0], 5, 1.4, Quota(20))
    assert [str(q) for q in heard.quotas] == ["20/2s"]
    heard = await say(limiter, grants[1], 4, 0.3, Quota(20))
    assert [str(q) for q in heard.quotas] == ["20/2s"]  # a shorter reset says nothing new
    heard = await say(limiter, grants[2], 3, 2.9, Quota(20))
    assert [str(q) for q in heard.quotas] == ["20/3s"]


async def test_a_changed_window_leaves_no_count_behind(redis: Redis) -> None:
    settings, queue, limiter = await backlog(redis, 10, limits="100/1s")
    grants = [*await taken(queue, 1), *await taken(queue, 1)]
    await say(limiter, grants[0], 5, 1.0, Quota(10, 1.0))
    await answered(queue, grants[:1])
    terms = Keys.from_settings(settings).terms

    async def fields() -> list[bytes]:
        return cast(list[bytes], await redis.hkeys(terms))

    assert any(name.startswith(b"q1000") for name in await fields())
    await say(limiter, grants[1], 5, 1.0, Quota(600, 60.0))
    await answered(queue, grants[1:])
    assert not any(name.startswith(b"q1000") for name in await fields())


async def test_observe_shows_what_the_api_says_and_limits_nothing(redis: Redis) -> None:
    settings, queue, limiter = await backlog(redis, 10, limits="100/1s", rate_headers="observe")
    first = await taken(queue, 1)
    await say(limiter, first[0], 0, 30.0, Quota(50, 60.0))
    assert len(await taken(queue, 10)) == 9
    status = await collect(redis, settings)
    shown = json.loads(status.to_json())
    assert shown["api_remaining"] == 0
    assert shown["api_limit"] == 50
    assert 29 < shown["api_reset_in"] <= 30
    assert shown["api_terms"] == []


async def test_status_shows_the_api_beside_our_limits(redis: Redis) -> None:
    settings, queue, limiter = await backlog(redis, 10, limits="100/1s")
    first = await taken(queue, 2)
    await say(limiter, first[0], 7, 10.0, Quota(20, 10.0))
    status = await collect(redis, settings)
    assert status.announced.api_remaining == 7
    assert status.announced.api_left == 6
    from ratedispatch.ops.status import render

    text = render(status)
    assert "the API says 7 remain (of 20)" in text
    assert "carried  api 20/10s" in text


async def test_429s_lower_the_fleets_limits_once_a_window(redis: Redis) -> None:
    settings, queue, limiter = await backlog(redis, 40, limits="10/300ms", rate_adapt=True)
    assert await limiter.after_429(0) == (0.0, 0.7)
    assert await limiter.after_429(0) == (0.0, 0.7)  # the same excess: lowered once
    assert len(await taken(queue, 20)) == 7  # 0.7 of 10, in every worker
    shown = json.loads((await collect(redis, settings)).to_json())
    assert (shown["adapt_factor"], shown["adapted_limits"]) == (0.7, "7/300ms")

    async def lowered_again() -> bool:
        return (await limiter.after_429(0))[1] < 0.7

    await eventually(lowered_again, timeout=2, what="a window later, a second step down")


async def test_success_raises_them_back_under_the_429s_level_then_tries_above(
    redis: Redis,
) -> None:
    _, queue, limiter = await backlog(redis, 80, limits="10/200ms", rate_adapt=True)
    await limiter.after_429(0)  # at 10 of 10: 10 is where the API said no
    lowered = time.monotonic()
    factors: list[float] = []

    async def back_at_limits() -> bool:
        await answered(queue, await taken(queue, 20))
        state = await limiter.state()
        assert state.adapt is not None
        if not factors or factors[-1] != state.adapt:
            factors.append(state.adapt)
        return state.adapt >= 1.0

    await eventually(back_at_limits, timeout=6, what="LIMITS again")
    # Halfway back to one call under the 429's 10 (at least a call a window), held there for 8
    # windows, then a call more.
    assert factors == pytest.approx([0.7, 0.825, 0.925, 1.0])
    assert time.monotonic() - lowered >= 8 * 0.2


async def test_without_adapt_a_429_lowers_nothing(redis: Redis) -> None:
    _, queue, limiter = await backlog(redis, 10, limits="10/1s")
    assert await limiter.after_429(0) == (0.0, 1.0)
    assert len(await taken(queue, 20)) == 10
