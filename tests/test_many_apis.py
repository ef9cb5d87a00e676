"""Many APIs in one fleet (RATEDISPATCH_CONFIG): each entry goes to the API its field `api` names,
with that API's token and limits; an unknown name is dead-lettered; an API without room never
delays another's calls. Runs on fakeredis and on a real redis-server (the `redis` fixture)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import anyio
import httpx
import pytest
import respx
from redis.asyncio import Redis

from ratedispatch import build_entry, enqueue
from ratedispatch.apis import Api, load_apis
from ratedispatch.keys import Keys
from ratedispatch.ops.status import collect, render
from ratedispatch.settings import Settings
from ratedispatch.worker.metrics import Metrics

from .conftest import API, make_settings
from .helpers import count_is, eventually, everything_in, fields_of, index_all, queue_for, running

pytestmark = pytest.mark.anyio

GITHUB = "http://github.test"


def apis_for(settings: Settings, tmp_path: Path, text: str) -> dict[str, Api]:
    path = tmp_path / "apis.toml"
    path.write_text(text)
    return load_apis(settings, path, {"GITHUB_TOKEN": "gh-token"})


async def add(
    redis: Redis, settings: Settings, endpoint: str, api: str | None, priority: str = "normal"
) -> str:
    return await enqueue(redis, settings.stream, build_entry(endpoint, api=api, priority=priority))


async def test_each_entry_is_called_on_its_api_with_that_apis_token(
    redis: Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(api_token="default-token")
    apis = apis_for(
        settings,
        tmp_path,
        f'[apis.github]\nbase_url = "{GITHUB}"\ntoken_env = "GITHUB_TOKEN"\nlimits = "50/1s"\n',
    )
    await add(redis, settings, "/repos", "github")
    await add(redis, settings, "/profile", None)
    await add(redis, settings, "/me", "default")
    with respx.mock() as api:
        github = api.get(f"{GITHUB}/repos").respond(200)
        default = api.get(url__regex=rf"{API}/(profile|me)").respond(200)
        async with running(settings, redis, apis=apis):
            await count_is(redis, settings.results_stream, 3)
    assert github.call_count == 1 and default.call_count == 2
    assert github.calls.last.request.headers["Authorization"] == "Bearer gh-token"
    # The field names the API; it is not sent as a query parameter.
    assert "api" not in github.calls.last.request.url.params
    for call in default.calls:
        assert call.request.headers["Authorization"] == "Bearer default-token"
    assert {r["status"] for r in await fields_of(redis, settings.results_stream)} == {"ok"}
    # The tokens reach the APIs only: not Redis, not the logs.
    stored = [caplog.text, *await everything_in(redis)]
    for token in ("gh-token", "default-token"):
        assert all(token not in text for text in stored), token


async def test_an_unknown_api_is_dead_lettered_with_the_known_ones(
    redis: Redis, tmp_path: Path
) -> None:
    settings = make_settings()
    apis = apis_for(settings, tmp_path, f'[apis.github]\nbase_url = "{GITHUB}"\nlimits = "5/1s"\n')
    await redis.xadd(settings.stream, {"endpoint": "/x", "api": "gitlab"})
    with respx.mock(assert_all_called=False) as api:
        route = api.route().respond(200)
        async with running(settings, redis, apis=apis):
            await count_is(redis, settings.dead_letter_stream, 1)
    assert route.call_count == 0
    [letter] = await fields_of(redis, settings.dead_letter_stream)
    assert letter["api"] == "gitlab"  # the entry's fields are kept
    assert "no API is named 'gitlab': the known ones are default, github" in letter["reason"]


async def test_an_api_without_room_never_delays_another(redis: Redis, tmp_path: Path) -> None:
    settings = make_settings(rate_limit=100, concurrency=8)
    apis = apis_for(settings, tmp_path, f'[apis.slow]\nbase_url = "{GITHUB}"\nlimits = "1/1s"\n')
    # The slow API's backlog comes first and ranks first; the default API's tasks come after.
    for n in range(20):
        await add(redis, settings, f"/slow/{n}", "slow", priority="high")
    for n in range(20):
        await add(redis, settings, f"/fast/{n}", None, priority="low")
    with respx.mock() as api:
        slow = api.get(url__regex=rf"{GITHUB}/slow/\d+").respond(200)
        fast = api.get(url__regex=rf"{API}/fast/\d+").respond(200)
        async with running(settings, redis, apis=apis):
            started = time.monotonic()
            # Behind the slow API's 20 tasks (1 a second), they would take 19 s or more.
            await eventually(lambda: results_are(redis, settings, 20), 5.0, "20 results")
            elapsed = time.monotonic() - started
    assert fast.call_count == 20
    # Meanwhile the slow API went at its own pace.
    assert 1 <= slow.call_count <= 1 + math.ceil(elapsed)
    # The slow API's tasks wait in its own index, named from its RATE_KEY.
    keys = Keys.from_settings(apis["slow"].settings, "slow")
    assert keys.index == "rate:external:api:slow:deferred"
    assert await redis.zcard(keys.index) >= 20 - slow.call_count - settings.concurrency
    # `status` shows each API: its own backlog and limits.
    status = await collect(redis, settings, apis)
    default, slow_api = status.apis
    assert (default.name, slow_api.name) == ("default", "slow")
    assert slow_api.waiting["high"] == await redis.zcard(keys.index)
    assert default.waiting == {"high": 0, "normal": 0, "low": 0}
    assert [(t.term, t.limit) for t in slow_api.terms] == [("1/1s", 1)]
    assert json.loads(status.to_json())["apis"][1]["name"] == "slow"
    assert "api slow  waiting for a slot (high " in render(status)
    # The gauges too, labelled by API.
    metrics = Metrics()
    metrics.refresh(status)
    waiting = metrics.registry.get_sample_value(
        "ratedispatch_api_waiting", {"api": "slow", "priority": "high"}
    )
    assert waiting == slow_api.waiting["high"]
    assert (
        metrics.registry.get_sample_value("ratedispatch_api_limit", {"api": "slow", "term": "1/1s"})
        == 1
    )


async def results_are(redis: Redis, settings: Settings, n: int) -> bool:
    return bool(await redis.xlen(settings.results_stream) >= n)


async def test_without_a_config_file_the_field_api_is_a_query_parameter_as_before(
    redis: Redis,
) -> None:
    settings = make_settings()
    await redis.xadd(settings.stream, {"endpoint": "/x", "api": "v2"})
    with respx.mock(base_url=API) as api:
        route = api.get("/x").respond(200)
        async with running(settings, redis):
            await count_is(redis, settings.results_stream, 1)
    assert route.calls.last.request.url.params["api"] == "v2"


def test_a_task_for_an_api_is_built_with_its_field() -> None:
    assert build_entry("/x", api="github")["api"] == "github"
    with pytest.raises(ValueError, match="reserved"):
        build_entry("/x", api="github", fields={"api": "other"})


async def test_a_task_indexed_for_another_api_is_dead_lettered_not_called(
    redis: Redis, tmp_path: Path
) -> None:
    settings = make_settings()
    apis = apis_for(settings, tmp_path, f'[apis.github]\nbase_url = "{GITHUB}"\nlimits = "5/1s"\n')
    # A worker without the config file reads `api` as a query parameter: into the default index.
    old_worker = queue_for(make_settings(consumer="old-worker"), redis)
    await old_worker.ensure_group()
    await redis.xadd(settings.stream, {"endpoint": "/repos", "api": "github"})
    await index_all(old_worker)
    assert await redis.zcard(Keys.from_settings(settings).index) == 1
    with respx.mock(assert_all_called=False) as api:
        route = api.route().respond(200)
        async with running(settings, redis, apis=apis):
            await count_is(redis, settings.dead_letter_stream, 1)
    assert route.call_count == 0  # neither on the default API's URL nor with its token
    [letter] = await fields_of(redis, settings.dead_letter_stream)
    assert "indexed for API 'default' but names API 'github'" in letter["reason"]


async def test_an_apis_retry_is_not_held_back_by_another_apis_traffic(
    redis: Redis, tmp_path: Path
) -> None:
    settings = make_settings(rate_limit=1000, concurrency=4)
    apis = apis_for(settings, tmp_path, f'[apis.other]\nbase_url = "{GITHUB}"\nlimits = "50/1s"\n')
    await add(redis, settings, "/flaky", "other")
    for n in range(120):
        await add(redis, settings, f"/busy/{n}", None)
    seen: list[tuple[str, float]] = []

    async def busy(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(0.05)  # 120 calls, 4 at a time: the reader is busy for 1.5 s
        seen.append(("busy", time.monotonic()))
        return httpx.Response(200)

    def flaky(request: httpx.Request) -> httpx.Response:
        seen.append(("flaky", time.monotonic()))
        return httpx.Response(503 if len([s for s in seen if s[0] == "flaky"]) == 1 else 200)

    with respx.mock() as api:
        api.get(f"{GITHUB}/flaky").mock(side_effect=flaky)
        api.get(url__regex=rf"{API}/busy/\d+").mock(side_effect=busy)
        async with running(settings, redis, apis=apis):
            await count_is(redis, settings.results_stream, 121)
    flaky_calls = [at for name, at in seen if name == "flaky"]
    busy_calls = [at for name, at in seen if name == "busy"]
    assert len(flaky_calls) == 2
    # Its retry (a backoff of at most 50 ms) went out while the other API was still busy.
    assert flaky_calls[1] < busy_calls[-1]


async def test_a_dead_letter_names_the_apis_own_max_attempts(redis: Redis, tmp_path: Path) -> None:
    settings = make_settings(max_attempts=3)
    apis = apis_for(
        settings,
        tmp_path,
        f'[apis.github]\nbase_url = "{GITHUB}"\nlimits = "50/1s"\nmax_attempts = 2\n',
    )
    await add(redis, settings, "/flaky", "github")
    with respx.mock() as api:
        route = api.get(f"{GITHUB}/flaky").respond(503)
        async with running(settings, redis, apis=apis):
            await count_is(redis, settings.dead_letter_stream, 1)
    [letter] = await fields_of(redis, settings.dead_letter_stream)
    assert route.call_count == 2
    assert "gave up after 2 attempts (max_attempts=2 for API 'github')" in letter["reason"]
