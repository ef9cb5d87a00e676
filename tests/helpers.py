"""Small helpers shared by the contract tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import httpx
from redis.asyncio import Redis

from ratedispatch import Dispatcher, Settings, build_entry, enqueue
from ratedispatch.guard import RedisGuard
from ratedispatch.keys import Keys
from ratedispatch.limits.limiter import Limiter, TermState, Window
from ratedispatch.queue import Consumers, Queue
from ratedispatch.task import Priority, parse_entry


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait (polling, with a deadline) until `check()` is true."""
    with anyio.move_on_after(timeout):
        while not await check():
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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


async def index_all(queue: Queue) -> int:
    """Read everything new and put it in the priority index, as a worker's reader does."""
    while entries := await queue.read_new(1000, 0):
        await queue.index([(e, parse_entry(e.id, e.fields)) for e in entries])
    return await queue.index_size()


__all__ = [
    "Priority",
    "add_tasks",
    "consumers_for",
    "counter_of",
    "dispatcher_for",
    "eventually",
    "index_all",
    "limiter_for",
    "queue_for",
    "term_state",
]
