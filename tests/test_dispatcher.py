"""The worker against a respx-mocked API: outcomes, retries, the window, stopping, Redis trouble.

Runs on fakeredis and on a real redis-server (the `redis` fixture)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import pytest
import respx
from redis.asyncio import Redis

from ratedispatch import Dispatcher
from ratedispatch.connection import connect
from ratedispatch.devtools.audit import Call, fixed_windows
from ratedispatch.queue import read_stream

from .conftest import API, make_settings, read_block_ms
from .helpers import add_tasks, count_is, counter_of, eventually, fields_of, running
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio


async def test_a_2xx_is_acknowledged_deleted_and_recorded(redis: Redis) -> None:
    settings = make_settings(api_token="tok")
    ids = await add_tasks(redis, settings, "normal")
    with respx.mock(base_url=API) as api:
        route = api.get("/t/0").respond(200)
        async with running(settings, redis):
            await count_is(redis, settings.results_stream, 1)
    request = route.calls.last.request
    assert request.url.params["n"] == "0"
    assert request.headers["Idempotency-Key"] == ids[0]
    assert request.headers["Authorization"] == "Bearer tok"
    [result] = await fields_of(redis, settings.results_stream)
    # exactly the contract's fields: no response body or task data is stored in results
    assert set(result) == {"id", "status", "http_status", "attempts", "duration_ms", "finished_at"}
    assert result["id"] == ids[0] and result["status"] == "ok"
    assert (result["http_status"], result["attempts"]) == ("200", "1")
    assert int(result["duration_ms"]) >= 0 and int(result["finished_at"]) > 1.6e12
    assert await redis.xlen(settings.stream) == 0  # XDEL after XACK
    assert (await redis.xpending(settings.stream, settings.group))["pending"] == 0


async def test_max_attempts_is_exact_then_dead_lettered(redis: Redis) -> None:
    settings = make_settings(max_attempts=3)
    ids = await add_tasks(redis, settings, "high")
    with respx.mock(base_url=API) as api:
        route = api.get("/t/0").respond(500)
        async with running(settings, redis):
            await count_is(redis, settings.dead_letter_stream, 1)
    assert route.call_count == 3
    [letter] = await fields_of(redis, settings.dead_letter_stream)
    assert letter["original_id"] == ids[0]
    assert (letter["attempts"], letter["last_status"]) == ("3", "500")
    assert letter["endpoint"] == "/t/0" and letter["priority"] == "high" and letter["n"] == "0"
    assert "gave up after 3 attempts" in letter["reason"]
    assert int(letter["failed_at"]) > 1.6e12
    [result] = await fields_of(redis, settings.results_stream)
    assert (result["status"], result["attempts"], result["http_status"]) == ("dead", "3", "500")


async def test_transient_failures_are_retried_until_success(redis: Redis) -> None:
    settings = make_settings(max_attempts=5)
    await add_tasks(redis, settings, "normal")
    with respx.mock(base_url=API) as api:
        route = api.get("/t/0")
        route.side_effect = [
            httpx.ConnectError("refused"),
            httpx.Response(503),
            httpx.ReadTimeout("slow"),
            httpx.Response(200),
        ]
        async with running(settings, redis):
            await count_is(redis, settings.results_stream, 1)
    assert route.call_count == 4
    [result] = await fields_of(redis, settings.results_stream)
    assert (result["status"], result["attempts"]) == ("ok", "4")


async def test_other_4xx_is_dead_lettered_at_once(redis: Redis) -> None:
    settings = make_settings()
    await add_tasks(redis, settings, "normal")
    with respx.mock(base_url=API) as api:
        route = api.get("/t/0").respond(404)
        async with running(settings, redis):
            await count_is(redis, settings.dead_letter_stream, 1)
    assert route.call_count == 1
    [letter] = await fields_of(redis, settings.dead_letter_stream)
    assert (letter["last_status"], letter["attempts"]) == ("404", "1")
    assert "404" in letter["reason"]


async def test_invalid_entries_are_dead_lettered_and_never_called(redis: Redis) -> None:
    settings = make_settings()
    await redis.xadd(settings.stream, {"user_id": "1"})
    await redis.xadd(settings.stream, {"endpoint": "http://evil.example/x"})
    await redis.xadd(settings.stream, {"endpoint": "/a", "body": "{oops"})
    await redis.xadd(settings.stream, {"endpoint": "/a", "priority": "urgent"})
    await redis.xadd(settings.stream, {"endpoint": b"/a\xff"})
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as api:
        route = api.route().respond(200)
        async with running(settings, redis):
            await count_is(redis, settings.dead_letter_stream, 5)
    assert route.call_count == 0
    letters = [e.fields for e in await read_stream(redis, settings.dead_letter_stream)]
    reasons = [f[b"reason"].decode() for f in letters]
    assert "no 'endpoint'" in reasons[0] and "not a path" in reasons[1]
    assert "not valid JSON" in reasons[2] and "urgent" in reasons[3] and "UTF-8" in reasons[4]
    assert letters[4][b"endpoint"] == b"/a\xff"  # original bytes kept as they were
    assert all(f[b"attempts"] == b"0" and f[b"last_status"] == b"invalid" for f in letters)
    assert await redis.xlen(settings.results_stream) == 5
    assert (await redis.xpending(settings.stream, settings.group))["pending"] == 0


async def test_a_429_closes_the_window_for_every_worker(redis: Redis) -> None:
    settings = make_settings(rate_limit=50, max_attempts=3)
    await add_tasks(redis, settings, "normal")
    seen: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "1"})
        return httpx.Response(200)

    with respx.mock(base_url=API) as api:
        api.get("/t/0").mock(side_effect=answer)
        async with running(settings, redis) as dispatcher:

            async def closed() -> bool:
                return (await counter_of(dispatcher.limiter)).full

            await eventually(closed, what="the window to close")
            window = await counter_of(dispatcher.limiter)
            assert window.used == 50 and window.resets_in is not None and window.resets_in > 0.5
            await count_is(redis, settings.results_stream, 1)
    assert len(seen) == 2 and seen[1] - seen[0] >= 0.9


async def test_a_full_window_leaves_entries_pending_until_it_reopens(redis: Redis) -> None:
    settings = make_settings(rate_limit=3, rate_window_seconds=0.3, concurrency=8)
    await add_tasks(redis, settings, *["normal"] * 10)
    calls: list[Call] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(Call(time.monotonic(), request.url.path))
        return httpx.Response(200)

    with respx.mock(base_url=API) as api:
        api.route().mock(side_effect=answer)
        async with running(settings, redis) as dispatcher:

            async def first_window_used() -> bool:
                return len(calls) >= 3

            await eventually(first_window_used)
            pending = (await redis.xpending(settings.stream, settings.group))["pending"]
            assert pending >= 7  # refused entries stay pending, not acknowledged
            assert (await counter_of(dispatcher.limiter)).used == 3
            await count_is(redis, settings.results_stream, 10)
    windows = fixed_windows(calls, 0.3, tolerance=0.02)
    assert [len(w) for w in windows] == [3, 3, 3, 1]


async def test_a_burst_after_a_quiet_spell_keeps_every_window_length_within_the_limit(
    redis: Redis,
) -> None:
    """A counter alone would let this through: 2 calls at the end of a window with room, and
    the next window's 4 right after it, 6 within one window's length. The window term keeps
    the late 2 calls' units busy for a window after their answers."""
    settings = make_settings(rate_limit=4, rate_window_seconds=0.5)
    seen: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        return httpx.Response(200)

    with respx.mock(base_url=API) as api:
        api.route().mock(side_effect=answer)
        async with running(settings, redis) as dispatcher:
            await add_tasks(redis, settings, "normal")
            await count_is(redis, settings.results_stream, 1)

            async def window_nearly_over() -> bool:
                resets_in = (await counter_of(dispatcher.limiter)).resets_in
                return resets_in is not None and resets_in < 0.15

            await eventually(window_nearly_over, what="the end of the first window")
            await add_tasks(redis, settings, "normal", "normal", endpoint="/late")
            await count_is(redis, settings.results_stream, 3)
            await add_tasks(redis, settings, *["normal"] * 8, endpoint="/burst")
            await count_is(redis, settings.results_stream, 11)
    busiest = max(sum(1 for t in seen if start <= t < start + 0.5) for start in seen)
    assert len(seen) == 11 and busiest == 4


async def test_never_more_calls_in_flight_than_concurrency_and_every_task_is_called_once(
    redis: Redis,
) -> None:
    settings = make_settings(concurrency=3, rate_limit=1000)
    ids = await add_tasks(redis, settings, *["normal", "high", "low"] * 8)
    active, most, seen = 0, 0, []

    async def tracked(request: httpx.Request) -> httpx.Response:
        nonlocal active, most
        active += 1
        most = max(most, active)
        seen.append(request.headers["Idempotency-Key"])
        await anyio.sleep(0.01)  # the API's answer time: calls overlap
        active -= 1
        return httpx.Response(200)

    with respx.mock(base_url=API) as api:
        api.route().mock(side_effect=tracked)
        async with running(settings, redis):
            await count_is(redis, settings.results_stream, len(ids))
    assert most == 3
    assert sorted(seen) == sorted(ids)


async def test_graceful_stop_finishes_calls_in_flight_and_leaves_the_rest_for_others(
    redis: Redis,
) -> None:
    settings = make_settings(concurrency=2, rate_limit=100, shutdown_grace_seconds=5)
    await add_tasks(redis, settings, *["normal"] * 6)
    release = anyio.Event()
    started = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal started
        started += 1
        await release.wait()
        return httpx.Response(200)

    with respx.mock(base_url=API) as api:
        api.route().mock(side_effect=slow)
        async with httpx.AsyncClient() as http:
            dispatcher = Dispatcher(settings, redis, http, read_block_ms=read_block_ms(redis))
            async with anyio.create_task_group() as tg:
                await tg.start(dispatcher.run)

                async def two_in_flight() -> bool:
                    return started == 2

                await eventually(two_in_flight)
                dispatcher.stop()
                release.set()
    assert started == 2
    assert await redis.xlen(settings.results_stream) == 2
    # The other four stay for the next worker: in the stream, and none held by the one stopped
    # (undelivered, or indexed under the waiting consumer), so nothing waits to be reclaimed.
    assert await redis.xlen(settings.stream) == 4
    held = await redis.xpending_range(
        settings.stream, settings.group, "-", "+", 10, consumername=settings.consumer
    )
    assert held == []


async def test_stop_cancels_calls_that_outlive_the_grace_and_leaves_them_pending(
    redis: Redis,
) -> None:
    settings = make_settings(
        concurrency=1, shutdown_grace_seconds=0.2, http_timeout_seconds=5, reclaim_idle_seconds=10
    )
    await add_tasks(redis, settings, "normal")
    started = anyio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError

    # respx records a call when its side effect returns; this one is cancelled on purpose.
    with respx.mock(base_url=API, assert_all_called=False) as api:
        api.route().mock(side_effect=hang)
        with anyio.fail_after(3):
            async with running(settings, redis):
                await started.wait()
    assert (await redis.xpending(settings.stream, settings.group))["pending"] == 1
    assert await redis.xlen(settings.results_stream) == 0


async def test_results_can_be_disabled_and_acked_entries_kept(redis: Redis) -> None:
    settings = make_settings(results_stream="", delete_acked=False)
    await add_tasks(redis, settings, "normal", "low")
    with respx.mock(base_url=API) as api:
        route = api.route().respond(200)
        async with running(settings, redis):

            async def acked() -> bool:
                info = await redis.xpending(settings.stream, settings.group)
                return route.call_count == 2 and info["pending"] == 0

            await eventually(acked)
    assert await redis.xlen(settings.stream) == 2
    assert await redis.exists("external:api:results:stream") == 0


async def test_the_group_is_created_again_when_deleted_under_a_running_worker(redis: Redis) -> None:
    settings = make_settings()
    with respx.mock(base_url=API) as api:
        api.route().respond(200)
        async with running(settings, redis):
            await add_tasks(redis, settings, "normal")
            await count_is(redis, settings.results_stream, 1)
            await redis.xgroup_destroy(settings.stream, settings.group)
            await add_tasks(redis, settings, "normal")
            await count_is(redis, settings.results_stream, 2)


async def test_a_fresh_worker_creates_the_group_at_id_zero(redis: Redis) -> None:
    settings = make_settings()
    await add_tasks(redis, settings, "normal", "normal")  # before any worker existed
    with respx.mock(base_url=API) as api:
        api.route().respond(200)
        async with running(settings, redis):
            await count_is(redis, settings.results_stream, 2)


async def test_an_entry_with_thousands_of_fields_is_dead_lettered_without_crashing(
    redis: Redis,
) -> None:
    settings = make_settings()
    huge = {f"f{i}": "v" for i in range(4500)} | {"endpoint": "/a"}
    await redis.xadd(settings.stream, huge)  # type: ignore[arg-type]
    await add_tasks(redis, settings, "normal")
    with respx.mock(base_url=API) as api:
        route = api.route().respond(200)
        async with running(settings, redis):
            await count_is(redis, settings.results_stream, 2)
    assert route.call_count == 1  # the worker survived and went on with the next task
    [letter] = await fields_of(redis, settings.dead_letter_stream)
    assert "4501 fields; at most 1000" in letter["reason"]
    assert letter["fields_dropped"] == "601" and letter["f0"] == "v"


async def test_attempts_are_counted_in_redis_and_survive_a_restart(redis: Redis) -> None:
    settings = make_settings(max_attempts=3)
    [entry_id] = await add_tasks(redis, settings, "normal")
    # Two attempts were made by a previous process with this consumer name, which died in its
    # second call: the count lives in Redis, as the entry's delivery count.
    await redis.xgroup_create(settings.stream, settings.group, "0")
    await redis.xreadgroup(settings.group, settings.consumer, {settings.stream: ">"})
    await redis.xclaim(
        settings.stream, settings.group, settings.consumer, 0, [entry_id], retrycount=2,
        justid=True,
    )  # fmt: skip
    with respx.mock(base_url=API) as api:
        route = api.route().respond(503)
        async with running(settings, redis):
            await count_is(redis, settings.dead_letter_stream, 1)
    assert route.call_count == 1
    [letter] = await fields_of(redis, settings.dead_letter_stream)
    assert letter["attempts"] == "3" and "gave up after 3 attempts" in letter["reason"]
    assert (await redis.xpending(settings.stream, settings.group))["pending"] == 0


async def test_results_are_capped_approximately(redis: Redis) -> None:
    settings = make_settings(results_maxlen=10, rate_limit=1000, concurrency=16)
    await add_tasks(redis, settings, *["low"] * 300)
    with respx.mock(base_url=API) as api:
        route = api.route().respond(200)
        async with running(settings, redis):

            async def all_called() -> bool:
                return (
                    route.call_count == 300
                    and (await redis.xpending(settings.stream, settings.group))["pending"] == 0
                )

            await eventually(all_called)
    # MAXLEN ~ trims whole radix-tree nodes (100 entries by default), never below the cap.
    assert 10 <= await redis.xlen(settings.results_stream) < 300


async def test_a_redirect_is_not_followed_so_the_token_never_leaves_the_api(redis: Redis) -> None:
    settings = make_settings(api_token="tok")
    await add_tasks(redis, settings, "normal")
    with respx.mock(base_url=API, assert_all_called=False) as api:
        route = api.get("/t/0").respond(302, headers={"Location": "https://evil.example/steal"})
        elsewhere = respx.get("https://evil.example/steal").respond(200)
        async with running(settings, redis):
            await count_is(redis, settings.dead_letter_stream, 1)
    assert route.call_count == 1 and elsewhere.call_count == 0
    [letter] = await fields_of(redis, settings.dead_letter_stream)
    assert letter["last_status"] == "302"


async def test_a_worker_that_runs_dry_records_its_success_without_reading_in_a_loop(
    own_redis_server: RedisServer,
) -> None:
    # The take after a call records its success; when the stream has run dry, the reader's read
    # comes back empty and must record it all the same, not read again at once while holding
    # back the writer that would otherwise record it (measured: ~1,800 reads for 5 tasks).
    redis = connect(own_redis_server.url)
    settings = make_settings(redis_url=own_redis_server.url, rate_limit=1000, concurrency=1)
    with respx.mock(base_url=API) as api:
        api.get(url__regex=r"/t/\d+").respond(200)
        async with running(settings, redis):
            await add_tasks(redis, settings, "normal")
            await count_is(redis, settings.results_stream, 1)
            await redis.config_resetstat()
            for done in range(2, 7):  # one task at a time: each call takes the one capacity
                await add_tasks(redis, settings, "normal")
                await count_is(redis, settings.results_stream, done)
    stats: Any = await redis.info("commandstats")
    await redis.aclose()
    # Per task: the blocking read that finds it, and the one after its call, which finds
    # nothing and records the success (2 each, measured).
    assert stats["cmdstat_xreadgroup"]["calls"] <= 4 * 5, stats["cmdstat_xreadgroup"]
