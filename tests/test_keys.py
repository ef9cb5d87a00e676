"""Many tenants behind one API (key_field, key_limits, key_weights, tokens_file): each key's own
limits on top of the API's, keys served in turn when the API's limits are the bottleneck, a key
without room never delaying another, each key's calls carrying its own token, and nothing left in
Redis by a key once it is idle. Runs on fakeredis and on a real redis-server."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import respx
from redis.asyncio import Redis

from ratedispatch import build_entry, enqueue
from ratedispatch.apis import default_api
from ratedispatch.ops.status import collect, render
from ratedispatch.queue.entries import Success, as_text
from ratedispatch.settings import Settings
from ratedispatch.task import parse_entry
from ratedispatch.worker.metrics import Metrics

from .conftest import API, make_settings
from .helpers import count_is, eventually, everything_in, fields_of, index_all, queue_for, running

pytestmark = pytest.mark.anyio


async def add(
    redis: Redis, settings: Settings, tenant: str | None, n: int, priority: str = "normal"
) -> None:
    fields = {"n": str(n)} if tenant is None else {"tenant": tenant, "n": str(n)}
    await enqueue(redis, settings.stream, build_entry("/t", priority=priority, fields=fields))


class Calls:
    """What the mock API saw: each call's tenant, number and time, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        token = request.headers.get("Authorization", "")
        self.seen.append((params.get("tenant", ""), params.get("n", ""), time.monotonic(), token))
        return httpx.Response(200)

    def tenants(self) -> list[str]:
        return [tenant for tenant, _, _, _ in self.seen]

    def most_in_any(self, tenant: str, seconds: float) -> int:
        """The most calls of `tenant` the API saw in any `seconds` (sliding)."""
        times = [at for t, _, at, _ in self.seen if t == tenant]
        return max((sum(1 for u in times if s <= u < s + seconds) for s in times), default=0)


async def run_until(
    redis: Redis, settings: Settings, results: int, calls: Calls, **kw: Any
) -> None:
    with respx.mock() as api:
        api.get(url__startswith=f"{API}/t").mock(side_effect=calls)
        async with running(settings, redis, **kw):
            await count_is(redis, settings.results_stream, results)


async def test_each_key_keeps_its_own_limits_on_top_of_the_apis(redis: Redis) -> None:
    settings = make_settings(limits="100/1s", key_field="tenant", key_limits="2/400ms")
    for n in range(6):
        await add(redis, settings, "a", n)
        await add(redis, settings, "b", n)
    calls = Calls()
    started = time.monotonic()
    await run_until(redis, settings, 12, calls)
    for tenant in ("a", "b"):
        assert calls.most_in_any(tenant, 0.4) <= 2, tenant
    # Three windows of 0.4 s each, the two keys side by side: at least two windows long.
    assert time.monotonic() - started >= 0.8
    results = await fields_of(redis, settings.results_stream)
    assert {r["status"] for r in results} == {"ok"}


async def test_a_key_without_room_never_delays_another(redis: Redis) -> None:
    settings = make_settings(limits="100/1s", key_field="tenant", key_limits="1/1s")
    # Key `slow` ranks first (high) with 20 tasks: 1 a second, 19 s or more for all of them.
    for n in range(20):
        await add(redis, settings, "slow", n, priority="high")
    for n in range(5):
        await add(redis, settings, f"other-{n}", n, priority="low")
    calls = Calls()
    with respx.mock() as api:
        api.get(url__startswith=f"{API}/t").mock(side_effect=calls)
        async with running(settings, redis):

            async def others_done() -> bool:
                return sum(t.startswith("other-") for t in calls.tenants()) == 5

            await eventually(others_done, 3.0, "the other keys' five calls")
    assert calls.tenants().count("slow") <= 3


async def test_keys_share_the_apis_limits_in_turn(redis: Redis) -> None:
    settings = make_settings(limits="10/300ms", key_field="tenant", concurrency=4)
    # One key's backlog first, then three small keys: each small key's tasks go out within
    # a round or two of the keys, not after the big backlog.
    for n in range(30):
        await add(redis, settings, "big", n)
    for small in ("s1", "s2", "s3"):
        for n in range(2):
            await add(redis, settings, small, n)
    calls = Calls()
    await run_until(redis, settings, 36, calls)
    order = calls.tenants()
    last_small = max(i for i, tenant in enumerate(order) if tenant != "big")
    # Four keys in turn: the small keys' six tasks are done by the 2nd round (8 calls), and a
    # take of CONCURRENCY may come before the first round starts.
    assert last_small < 8 + settings.concurrency, order
    assert order.count("big") == 30  # and the big key gets every slot nobody else wants


async def test_priority_comes_before_turns(redis: Redis) -> None:
    settings = make_settings(limits="10/300ms", key_field="tenant", concurrency=2)
    for n in range(6):
        await add(redis, settings, "a", n, priority="low")
    for n in range(6):
        await add(redis, settings, "b", n, priority="high")
    calls = Calls()
    await run_until(redis, settings, 12, calls)
    assert calls.tenants()[:6] == ["b"] * 6


async def test_a_weighted_key_gets_its_share(redis: Redis) -> None:
    settings = make_settings(
        limits="20/200ms", key_field="tenant", key_weights={"gold": 3.0}, concurrency=4
    )
    for n in range(40):
        await add(redis, settings, "gold", n)
        await add(redis, settings, "plain", n)
    calls = Calls()
    await run_until(redis, settings, 80, calls)
    # While both have tasks, gold gets three turns for each of plain's.
    first = Counter(calls.tenants()[:40])
    assert 27 <= first["gold"] <= 33, first


async def test_a_task_without_the_field_counts_under_the_empty_key(redis: Redis) -> None:
    settings = make_settings(limits="100/1s", key_field="tenant", key_limits="1/300ms")
    for n in range(3):
        await add(redis, settings, None, n)
    calls = Calls()
    await run_until(redis, settings, 3, calls)
    assert calls.most_in_any("", 0.3) == 1


async def test_a_key_that_failed_is_retried_under_its_key(redis: Redis) -> None:
    settings = make_settings(limits="100/1s", key_field="tenant", key_limits="1/300ms")
    await add(redis, settings, "a", 0)
    await add(redis, settings, "a", 1)
    failed = False
    calls = Calls()

    def first_fails(request: httpx.Request) -> httpx.Response:
        nonlocal failed
        calls(request)
        if not failed:
            failed = True
            return httpx.Response(503)
        return httpx.Response(200)

    with respx.mock() as api:
        api.get(url__startswith=f"{API}/t").mock(side_effect=first_fails)
        async with running(settings, redis):
            await count_is(redis, settings.results_stream, 2)
    # The failed call counted in its key's limits, and so did its retry: 3 calls, 1 per 0.3 s.
    assert len(calls.seen) == 3
    assert calls.most_in_any("a", 0.3) == 1


async def test_each_keys_calls_carry_its_own_token_and_no_token_is_stored(
    redis: Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = tmp_path / "tokens"
    tokens.write_text("# tenant tokens\nacme=tok-acme-1\n\nglobex = tok-globex-2\n")
    settings = make_settings(
        api_token="api-token-0", key_field="tenant", key_limits="5/1s", tokens_file=tokens
    )
    for tenant in ("acme", "globex", "initech"):
        await add(redis, settings, tenant, 0)
    # One more that the API refuses: its dead letter must not carry a token either.
    await enqueue(redis, settings.stream, build_entry("/gone", fields={"tenant": "acme"}))
    calls = Calls()
    with respx.mock() as api:
        api.get(url__startswith=f"{API}/t").mock(side_effect=calls)
        api.get(f"{API}/gone", params={"tenant": "acme"}).respond(404)
        async with running(settings, redis, apis={"default": default_api(settings)}):
            await count_is(redis, settings.results_stream, 4)
    by_tenant = {tenant: token for tenant, _, _, token in calls.seen}
    assert by_tenant == {
        "acme": "Bearer tok-acme-1",
        "globex": "Bearer tok-globex-2",
        "initech": "Bearer api-token-0",  # a key without a token uses the API's
    }
    stored = [caplog.text, *await everything_in(redis)]
    for token in ("tok-acme-1", "tok-globex-2", "api-token-0"):
        assert all(token not in text for text in stored), token


async def key_names(redis: Redis, pattern: str) -> Sequence[str]:
    return sorted(as_text(k) for k in await redis.keys(pattern))


async def test_an_idle_key_leaves_nothing_in_redis(redis: Redis) -> None:
    settings = make_settings(limits="1000/1s", key_field="tenant", key_limits="5/200ms")
    for n in range(200):
        await add(redis, settings, f"t{n}", n)
    calls = Calls()
    await run_until(redis, settings, 200, calls)
    assert len(set(calls.tenants())) == 200

    async def nothing_per_key() -> bool:
        return not await key_names(redis, "rate:external:api:keyed.key:*")

    # A key's limits go a second after they can no longer refuse anything.
    await eventually(nothing_per_key, 5.0, "no key of a tenant left")
    for name in ("ready:0", "ready:1", "ready:2", "sleeping", "backlog", "fair"):
        assert await redis.exists(f"rate:external:api:keyed.{name}") == 0, name


async def index_keyed(redis: Redis, settings: Settings) -> None:
    """Read everything new and index it by key, as a worker's reader does."""
    queue = queue_for(settings, redis)
    assert settings.key_field is not None
    while entries := await queue.read_new(1000, 0):
        fields = {"default": settings.key_field}
        await queue.index([(e, parse_entry(e.id, e.fields, key_fields=fields)) for e in entries])


async def test_status_and_metrics_show_the_keys_and_the_busiest(redis: Redis) -> None:
    settings = make_settings(limits="100/1s", key_field="tenant", key_limits="5/1s")
    for n in range(7):
        await add(redis, settings, "acme", n)
    for n in range(3):
        await add(redis, settings, "globex", n, priority="high")
    await add(redis, settings, None, 0)
    await index_keyed(redis, settings)
    status = await collect(redis, settings)
    assert status.waiting == {"high": 3, "normal": 8, "low": 0}
    assert status.keys is not None
    assert (status.keys.field, status.keys.waiting, status.keys.without_room) == ("tenant", 3, 0)
    assert [(k.key, k.waiting) for k in status.keys.busiest] == [
        ("acme", 7),
        ("globex", 3),
        ("", 1),
    ]
    assert "keys     by tenant: 3 with tasks waiting, 0 without room; busiest 'acme' 7" in (
        render(status)
    )
    assert json.loads(status.to_json())["keys"]["busiest"][0] == {"key": "acme", "waiting": 7}
    metrics = Metrics()
    metrics.refresh(status)
    text = metrics.exposition().decode()
    assert 'ratedispatch_keys_waiting{api="default"} 3.0' in text
    assert "acme" not in text  # never a label value per key


async def test_a_key_over_its_length_or_a_cost_over_key_limits_is_dead_lettered(
    redis: Redis,
) -> None:
    settings = make_settings(limits="100/1s", key_field="tenant", key_limits="2/1s")
    await enqueue(redis, settings.stream, build_entry("/t", fields={"tenant": "x" * 201}))
    await enqueue(redis, settings.stream, build_entry("/t", cost=3, fields={"tenant": "a"}))
    await add(redis, settings, "a", 0)
    calls = Calls()
    with respx.mock() as api:
        api.get(url__startswith=f"{API}/t").mock(side_effect=calls)
        async with running(settings, redis):
            await count_is(redis, settings.dead_letter_stream, 2)
            await count_is(redis, settings.results_stream, 1)
    reasons = sorted(
        letter["reason"] for letter in await fields_of(redis, settings.dead_letter_stream)
    )
    assert "'tenant' (the key_field of API 'default') is over 200 characters" in reasons[0]
    assert reasons[1].startswith("key_limits: cost 3 is more than the term 2/1s can ever grant")
    assert len(calls.seen) == 1


async def test_tasks_waiting_by_key_are_called_when_the_api_loses_its_key_field(
    redis: Redis,
) -> None:
    keyed = make_settings(limits="100/1s", key_field="tenant", key_limits="1/1s")
    for n in range(4):
        await add(redis, keyed, f"t{n % 2}", n, priority="high" if n < 2 else "low")
    await index_keyed(redis, keyed)
    plain = make_settings(limits="100/1s")
    calls = Calls()
    await run_until(redis, plain, 4, calls)
    assert sorted(n for _, n, _, _ in calls.seen) == ["0", "1", "2", "3"]
    assert not await key_names(redis, "rate:external:api:keyed.key:*")
    assert not await key_names(redis, "rate:external:api:keyed.*")


async def test_tasks_indexed_before_the_api_had_a_key_field_are_called(redis: Redis) -> None:
    plain = make_settings(limits="100/1s")
    for n in range(3):
        await add(redis, plain, "a", n)
    await index_all(queue_for(plain, redis))
    keyed = make_settings(limits="100/1s", key_field="tenant")
    calls = Calls()
    await run_until(redis, keyed, 3, calls)
    assert len(calls.seen) == 3
    status = await collect(redis, keyed)
    assert sum(status.waiting.values()) == 0


async def test_a_429_to_a_keys_own_token_closes_that_keys_limits_only(
    redis: Redis, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("a=tok-a\n")
    settings = make_settings(
        limits="100/1s", key_field="tenant", key_limits="10/1s", tokens_file=tokens, concurrency=1
    )
    await add(redis, settings, "a", 0)
    await add(redis, settings, "a", 1)
    for n in range(5):
        await add(redis, settings, "b", n)
    calls = Calls()
    refused = False

    def a_refused_once(request: httpx.Request) -> httpx.Response:
        nonlocal refused
        calls(request)
        if request.url.params["tenant"] == "a" and not refused:
            refused = True
            return httpx.Response(429, headers={"Retry-After": "1"})
        return httpx.Response(200)

    with respx.mock() as api:
        api.get(url__startswith=f"{API}/t").mock(side_effect=a_refused_once)
        async with running(settings, redis, apis={"default": default_api(settings)}):
            await count_is(redis, settings.results_stream, 7)
    a_times = [at for tenant, _, at, _ in calls.seen if tenant == "a"]
    b_times = [at for tenant, _, at, _ in calls.seen if tenant == "b"]
    # Key b, on the API's token, never waited for key a's cooldown...
    assert max(b_times) - a_times[0] < 0.5
    # ...and key a's other task waited for it.
    assert len(a_times) == 3 and min(a_times[1:]) - a_times[0] >= 0.9


async def test_max_waiting_counts_the_tasks_waiting_by_key(redis: Redis) -> None:
    settings = make_settings(limits="1/1h", key_field="tenant", max_waiting=60)
    for n in range(300):
        await add(redis, settings, f"t{n % 7}", n)
    with respx.mock(assert_all_called=False) as api:
        api.get(url__startswith=f"{API}/t").respond(200)
        async with running(settings, redis):

            async def held_back() -> bool:
                status = await collect(redis, settings)
                return sum(status.waiting.values()) >= 59

            await eventually(held_back, 5.0, "the index to fill up to MAX_WAITING")
            status = await collect(redis, settings)
    # At most one call goes out (1/1h); the rest stays in the stream beyond MAX_WAITING.
    assert sum(status.waiting.values()) <= 60
    assert status.not_delivered is not None and status.not_delivered >= 300 - 60 - 1


async def test_a_key_that_comes_back_after_each_turn_does_not_starve_a_waiting_one(
    redis: Redis,
) -> None:
    settings = make_settings(limits="1000/1s", key_field="tenant")
    queue = queue_for(settings, redis)
    for n in range(10):
        await add(redis, settings, "b", n)
    await index_keyed(redis, settings)
    served = []
    for n in range(20):
        await add(redis, settings, "a", n)  # one task, just before each take
        await index_keyed(redis, settings)
        take = await queue.take(1)
        served += [grant.key for grant in take.grants]
    # Turns alternate: `a` coming back each time goes behind `b`, not ahead of it again.
    assert served.count("b") >= 9, served


async def test_a_sleeping_key_does_not_hold_back_a_key_that_comes_later(redis: Redis) -> None:
    settings = make_settings(limits="100/1s", key_field="tenant", key_limits="4/5s", concurrency=2)
    for n in range(6):
        await add(redis, settings, "a", n)
    calls = Calls()
    with respx.mock() as api:
        api.get(url__startswith=f"{API}/t").mock(side_effect=calls)
        async with running(settings, redis):

            async def called(tenant: str, n: int) -> bool:
                return calls.tenants().count(tenant) >= n

            await eventually(lambda: called("a", 4), 3.0, "key a's first four calls")
            added = time.monotonic()
            for n in range(4):
                await add(redis, settings, "b", n)
            # Key a sleeps for 5 s; key b's four tasks (within its own 4/5s) go at once, the
            # two the reader cannot start at once too.
            await eventually(lambda: called("b", 4), 2.0, "key b's four calls")
    assert max(at for t, _, at, _ in calls.seen if t == "b") - added < 2.0


def long_calls(key_limits: str) -> Settings:
    """Keys with `key_limits`, and calls that may take 5 s: far longer than the key's terms."""
    return make_settings(
        limits="1000/1s",
        key_field="tenant",
        key_limits=key_limits,
        http_timeout_seconds=5.0,
        reclaim_idle_seconds=10.0,
    )


async def test_a_keys_limits_outlive_its_call_in_flight(redis: Redis) -> None:
    # 1 per 200 ms: the key's state would be gone 1.6 s after its take, long before the call's
    # 5 s deadline; while the call is in flight the key must stay without room.
    settings = long_calls("1/200ms")
    queue = queue_for(settings, redis)
    for n in range(2):
        await add(redis, settings, "a", n)
    await index_keyed(redis, settings)
    first = await queue.take(1)
    assert len(first.grants) == 1
    assert not (await queue.take(1)).grants
    # Time passing is what is tested: no take in between refreshes the key's state.
    await anyio.sleep(2.5)
    assert not (await queue.take(1)).grants, "a second call while the first is in flight"


async def test_an_answer_does_not_cut_short_the_limits_of_a_key_with_a_call_in_flight(
    redis: Redis,
) -> None:
    # 2 per 200 ms: after B's answer the key's state would go in 1.6 s, while A is in flight
    # until its 5 s deadline; then only one more call fits, not two.
    settings = long_calls("2/200ms")
    queue = queue_for(settings, redis)
    for n in range(4):
        await add(redis, settings, "a", n)
    await index_keyed(redis, settings)
    first = await queue.take(2)
    assert len(first.grants) == 2
    b = first.grants[1]
    # Time passing is what is tested: B is answered once the key's state is due for a refresh
    # (half its idle time), which must not shorten its life to less than A's deadline...
    await anyio.sleep(0.7)
    await queue.ack_many([Success(b.entry.id, 200, 1, 1, b.stamp, cost=b.cost, key=b.key)])
    await anyio.sleep(2.0)  # ...and 2 s later, past what it was cut to, A is still in flight
    assert len((await queue.take(2)).grants) == 1  # A is still in flight


async def test_a_heavy_weight_or_a_light_one_does_not_push_a_new_key_behind_the_backlog(
    redis: Redis,
) -> None:
    settings = make_settings(
        limits="1000/1s", key_field="tenant", key_weights={"heavy": 100.0, "light": 0.01}
    )
    queue = queue_for(settings, redis)
    await queue.prepare_keys()  # the weights, as a starting worker publishes them
    for n in range(100):
        await add(redis, settings, "heavy", n)
    for n in range(3):
        await add(redis, settings, "light", n)
    await index_keyed(redis, settings)
    for _ in range(5):
        assert (await queue.take(1)).grants
    await add(redis, settings, "new", 0)
    await index_keyed(redis, settings)
    served = []
    while "new" not in served:
        served += [grant.key for grant in (await queue.take(1)).grants]
        assert len(served) <= 10, served  # not behind the heavy key's 95 others
