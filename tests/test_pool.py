"""A pool of credentials for one API (tokens_env): each token has its own copy of the API's limits,
and each call goes out on a token with room, so the pool multiplies the quota without a second
fleet. Runs on fakeredis and on a real redis-server."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest
import respx
from redis.asyncio import Redis

from ratedispatch import build_entry, enqueue
from ratedispatch.apis import load_apis
from ratedispatch.errors import ConfigError
from ratedispatch.ops.status import collect, render
from ratedispatch.worker.metrics import Metrics

from .conftest import API, make_settings
from .helpers import count_is, everything_in, running
from .test_keys import index_keyed

pytestmark = pytest.mark.anyio

LLM = "http://llm.test"
TOKENS = {"LLM_KEY_1": "sk-one-1111", "LLM_KEY_2": "sk-two-2222", "LLM_KEY_3": "sk-three-3333"}
CONFIG = f"""
[apis.llm]
base_url = "{LLM}"
tokens_env = ["LLM_KEY_1", "LLM_KEY_2", "LLM_KEY_3"]
limits = "2/500ms"
"""


async def test_each_call_uses_a_token_with_room_and_each_token_keeps_the_limits(
    redis: Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(concurrency=8)
    (tmp_path / "apis.toml").write_text(CONFIG)
    apis = load_apis(settings, tmp_path / "apis.toml", TOKENS)
    for n in range(18):
        await enqueue(redis, settings.stream, build_entry(f"/c/{n}", api="llm"))
    seen: list[tuple[str, float]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers["Authorization"].removeprefix("Bearer "), time.monotonic()))
        return httpx.Response(200)

    with respx.mock() as api:
        api.get(url__startswith=f"{LLM}/c/").mock(side_effect=answer)
        async with running(settings, redis, apis=apis):
            started = time.monotonic()
            await count_is(redis, settings.results_stream, 18)
            elapsed = time.monotonic() - started
    by_token = {token: [at for t, at in seen if t == token] for token in TOKENS.values()}
    # Every token carried its share, and none more than 2 calls in any 0.5 s.
    assert {token: len(times) for token, times in by_token.items()} == dict.fromkeys(
        TOKENS.values(), 6
    )
    for times in by_token.values():
        assert max(sum(1 for u in times if s <= u < s + 0.5) for s in times) <= 2
    # 18 calls at 2 per 0.5 s on one token take 4 s; on three, about 1.5 s.
    assert elapsed < 3.5
    status = await collect(
        redis, settings, load_apis(settings, tmp_path / "apis.toml", tokens=False)
    )
    [llm] = [a for a in status.apis if a.name == "llm"]
    assert [c.variable for c in llm.credentials] == list(TOKENS)
    text = render(status)
    assert "credential LLM_KEY_2" in text
    metrics = Metrics()
    metrics.refresh(status)
    exposition = metrics.exposition().decode()
    assert (
        'ratedispatch_credential_limit_used{api="llm",credential="LLM_KEY_3",term="2/500ms"}'
        in (exposition)
    )
    stored = [caplog.text, text, status.to_json(), exposition, *await everything_in(redis)]
    for token in TOKENS.values():
        assert all(token not in s for s in stored), token


async def test_a_429_closes_only_the_credential_that_got_it(redis: Redis, tmp_path: Path) -> None:
    settings = make_settings(concurrency=2)
    (tmp_path / "apis.toml").write_text(CONFIG.replace("2/500ms", "100/1s"))
    apis = load_apis(settings, tmp_path / "apis.toml", TOKENS)
    for n in range(9):
        await enqueue(redis, settings.stream, build_entry(f"/c/{n}", api="llm"))
    seen: list[tuple[str, float, str]] = []
    refused = ""  # the first call's task: its credential gets the 429

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal refused
        token = request.headers["Authorization"].removeprefix("Bearer ")
        seen.append((token, time.monotonic(), request.url.path))
        if not refused:
            refused = request.url.path
            return httpx.Response(429, headers={"Retry-After": "2"})
        return httpx.Response(200)

    with respx.mock() as api:
        api.get(url__startswith=f"{LLM}/c/").mock(side_effect=answer)
        async with running(settings, redis, apis=apis):
            await count_is(redis, settings.results_stream, 9)
    victim, first, _ = seen[0]
    others = [at for token, at, path in seen if token != victim and path != refused]
    # The other credentials went on at once: the other tasks were done well before the 2 s
    # cooldown (the refused task itself waits out its Retry-After).
    assert max(others) - first < 1.5
    # The refused credential started nothing new before its cooldown ended (a call it had
    # started beside the refused one, within a few ms, was already on its way).
    later = [at - first for token, at, _ in seen if token == victim and at > first]
    assert all(delay < 0.1 or delay >= 1.9 for delay in later), later


async def test_a_pool_api_that_loses_its_key_field_calls_the_tasks_waiting_by_key(
    redis: Redis, tmp_path: Path
) -> None:
    keyed = make_settings(limits="100/1s", key_field="tenant")
    for n in range(3):
        await enqueue(redis, keyed.stream, build_entry(f"/c/{n}", fields={"tenant": f"t{n}"}))
    await index_keyed(redis, keyed)
    plain = make_settings(limits="100/1s")
    (tmp_path / "apis.toml").write_text('[apis.default]\ntokens_env = ["LLM_KEY_1", "LLM_KEY_2"]\n')
    apis = load_apis(plain, tmp_path / "apis.toml", TOKENS)
    with respx.mock() as api:
        route = api.get(url__startswith=f"{API}/c/").respond(200)
        async with running(plain, redis, apis=apis):
            await count_is(redis, plain.results_stream, 3)
    assert route.call_count == 3


def test_a_pool_and_a_tokens_file_are_refused_together(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("a=tok-a\n")
    settings = make_settings(key_field="tenant", tokens_file=tmp_path / "tokens")
    (tmp_path / "apis.toml").write_text('[apis.default]\ntokens_env = ["LLM_KEY_1"]\n')
    with pytest.raises(ConfigError, match=r"has a pool \(tokens_env\) and a tokens_file"):
        load_apis(settings, tmp_path / "apis.toml", TOKENS)
    # Both in the API's own table: the same.
    (tmp_path / "apis.toml").write_text(
        '[apis.default]\ntokens_env = ["LLM_KEY_1"]\nkey_field = "t"\ntokens_file = "tokens"\n'
    )
    with pytest.raises(ConfigError, match=r"has a pool \(tokens_env\) and a tokens_file"):
        load_apis(make_settings(), tmp_path / "apis.toml", TOKENS)


async def test_status_of_a_default_pool_shows_its_first_credentials_limits(
    redis: Redis, tmp_path: Path
) -> None:
    settings = make_settings(limits="5/1s")
    (tmp_path / "apis.toml").write_text('[apis.default]\ntokens_env = ["LLM_KEY_1", "LLM_KEY_2"]\n')
    apis = load_apis(settings, tmp_path / "apis.toml", TOKENS)
    for n in range(4):
        await enqueue(redis, settings.stream, build_entry(f"/c/{n}"))
    with respx.mock() as api:
        api.get(url__startswith=f"{API}/c/").respond(200)
        async with running(settings, redis, apis=apis):
            await count_is(redis, settings.results_stream, 4)
    status = await collect(
        redis, settings, load_apis(settings, tmp_path / "apis.toml", tokens=False)
    )
    [default] = [a for a in status.apis if a.name == "default"]
    assert sum(c.terms[0].used for c in default.credentials) == 4
    assert status.terms[0].used == default.credentials[0].terms[0].used
    assert status.window_used == default.credentials[0].terms[0].used
