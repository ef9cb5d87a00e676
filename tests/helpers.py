"""Small helpers shared by the contract tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import httpx
from redis.asyncio import Redis

from ratedispatch import Dispatcher, Settings, build_entry, enqueue
from ratedispatch.queue.queue import Queue
from ratedispatch.task import Priority


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait (polling, with a deadline) until `check()` is true."""
    with anyio.move_on_after(timeout):
        while not await check():
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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
    entries = await queue.read_new(1000, 0)
    from ratedispatch.task import parse_entry

    items = [(e, parse_entry(e.id, e.fields)) for e in entries]
    await queue.take(0, items)  # no slot wanted: every entry goes into the index
    return await queue.waiting()


__all__ = ["Priority", "add_tasks", "dispatcher_for", "eventually", "index_all"]
