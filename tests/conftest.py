"""One fixture module: Redis (fakeredis with Lua, and a real redis-server), settings, helpers."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis as redis_sync
from redis.asyncio import Redis

from ratedispatch.connection import connect
from ratedispatch.settings import Settings

from .redis_server import RedisServer

API = "http://api.test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's asyncio client runs on asyncio only


def _require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required in CI: the real-Redis tests must run")
        pytest.skip("redis-server is not installed")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    _require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(redis_server: RedisServer) -> redis_sync.Redis:
    """A plain (synchronous) client of the shared real redis-server, emptied first."""
    client = redis_sync.Redis.from_url(redis_server.url)
    client.flushall()
    return client


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test, with AOF on, which the test may kill and restart."""
    _require_redis_server()
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["fake", "real"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    """The same contract test, on fakeredis with Lua and on a real redis-server."""
    if request.param == "fake":
        client: Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = connect(server.url)
        await client.flushall()
        await client.script_flush()
    yield client
    await client.aclose()


def read_block_ms(redis: Redis) -> int:
    """fakeredis's blocking XREADGROUP blocks the event loop: poll on it instead."""
    return 0 if isinstance(redis, fakeredis.FakeAsyncRedis) else 1000


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: short windows and timeouts, no `.env` from the working directory."""
    values: dict[str, Any] = {
        "api_base_url": API,
        "consumer": "worker-a",
        "rate_limit": 100,
        "rate_window_seconds": 1.0,
        "concurrency": 4,
        "http_timeout_seconds": 1.0,
        "reclaim_idle_seconds": 2.0,
        "max_attempts": 3,
        "retry_backoff_seconds": 0.01,
        "retry_backoff_max_seconds": 0.05,
        "shutdown_grace_seconds": 2.0,
    }
    if "limits" in overrides:  # LIMITS replaces the one term of RATE_LIMIT per window
        del values["rate_limit"], values["rate_window_seconds"]
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_server: RedisServer
) -> redis_sync.Redis:
    """The command line against the shared real redis-server, emptied first: no RATEDISPATCH_
    variable or `.env` of the machine's applies."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("RATEDISPATCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RATEDISPATCH_REDIS_URL", redis_server.url)
    client = redis_sync.Redis.from_url(redis_server.url)
    client.flushall()
    return client
