"""Small helpers shared by the contract tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from redis.asyncio import Redis

from ratedispatch import Dispatcher, Settings, build_entry, enqueue
from ratedispatch.guard import RedisGuard
from ratedispatch.keys import Keys
from ratedispatch.limits.limiter import Limiter, TermState, Window
from ratedispatch.queue import Consumers, Entry, Queue, read_stream
from ratedispatch.queue.entries import as_text
from ratedispatch.task import Priority, Task, parse_entry

from .conftest import read_block_ms


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait (polling, with a deadline) until `check()` is true."""
    with anyio.move_on_after(timeout):
        while not await check():
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@asynccontextmanager
async def running(settings: Settings, redis: Redis, **kw: Any) -> AsyncIterator[Dispatcher]:
    async with httpx.AsyncClient() as http:
        dispatcher = Dispatcher(settings, redis, http, read_block_ms=read_block_ms(redis), **kw)
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            yield dispatcher
            dispatcher.stop()


async def fields_of(redis: Redis, stream: str) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in e.fields.items()}
        for e in await read_stream(redis, stream)
    ]


async def everything_in(redis: Redis) -> list[str]:
    """Every value in Redis, as text: to check that no secret reached it."""
    stored = []
    for key in await redis.keys("*"):
        kind = as_text(await redis.type(key))
        if kind == "stream":
            stored += [repr(entry.fields) for entry in await read_stream(redis, as_text(key))]
        elif kind == "hash":
            stored.append(repr(await redis.hgetall(key)))
        elif kind == "zset":
            stored.append(repr(await redis.zrange(key, 0, -1, withscores=True)))
        else:
            stored.append(repr(await redis.get(key)))
    return stored


async def count_is(redis: Redis, stream: str, n: int) -> None:
    async def check() -> bool:
        return bool(await redis.xlen(stream) >= n)

    await eventually(check, what=f"{n} entries on {stream}")


def limiter_for(settings: Settings, redis: Redis) -> Limiter:
    return Limiter.from_settings(redis, Keys.from_settings(settings), settings)


async def counter_of(limiter: Limiter) -> Window:
    """The fixed-window counter at RATE_KEY (of the first N/D term)."""
    window = (await limiter.state()).window
    assert window is not None, "no N/D term, so no counter"
    return window


async def term_state(limiter: Limiter, index: int = 0) -> TermState:
    """Where the index-th term of LIMITS (or MAX_IN_FLIGHT, after them) stands."""
    return (await limiter.state()).terms[index]


def queue_for(settings: Settings, redis: Redis) -> Queue:
    """One consumer's Queue, as a worker makes it, without the worker around it: its guard
    creates the group when Redis says there is none (NOGROUP), as a worker's does."""

    async def create_group() -> None:
        await queue.ensure_group()

    guard = RedisGuard(settings.redis_url, on_nogroup=create_group)
    queue = Queue.from_settings(redis, settings, limiter_for(settings, redis), guard)
    return queue


def consumers_for(settings: Settings, redis: Redis, guard: RedisGuard | None = None) -> Consumers:
    guard = guard or RedisGuard(settings.redis_url)
    return Consumers(redis, Keys.from_settings(settings), settings.consumer, guard)


def dispatcher_for(
    settings: Settings, redis: Redis, http: httpx.AsyncClient | None = None
) -> Dispatcher:
    return Dispatcher(settings, redis, http or httpx.AsyncClient())


async def add_tasks(
    redis: Redis, settings: Settings, *priorities: str, endpoint: str = "/t"
) -> list[str]:
    ids = []
    for i, priority in enumerate(priorities):
        entry = build_entry(f"{endpoint}/{i}", priority=priority, fields={"n": str(i)})
        ids.append(await enqueue(redis, settings.stream, entry))
    return ids


async def fresh_read(queue: Queue, count: int) -> list[tuple[Entry, Task]]:
    """Read like a worker's reader: new entries, with their priority."""
    return [
        (e, parse_entry(e.id, e.fields)) for e in await queue.read_new(count, 0)
    ]  # fmt: skip


async def index_all(queue: Queue) -> int:
    """Read everything new and put it in the priority index, as a worker's reader does."""
    while entries := await queue.read_new(1000, 0):
        await queue.index([(e, parse_entry(e.id, e.fields)) for e in entries])
    return await queue.index_size()


__all__ = [
    "Priority",
    "add_tasks",
    "consumers_for",
    "count_is",
    "counter_of",
    "dispatcher_for",
    "eventually",
    "fields_of",
    "fresh_read",
    "index_all",
    "limiter_for",
    "queue_for",
    "running",
    "term_state",
]
