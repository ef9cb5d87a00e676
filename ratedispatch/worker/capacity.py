"""A worker's capacity: CONCURRENCY calls in flight at most, reserved before a take asks Redis
for slots (so a worker never takes slots it cannot call on) and released as calls end."""

from __future__ import annotations

import anyio


class Capacity:
    def __init__(self, concurrency: int) -> None:
        self._free = anyio.Semaphore(concurrency)
        self._freed = anyio.Event()

    @property
    def free(self) -> int:
        return self._free.value

    async def acquire(self) -> None:
        """Wait for one."""
        await self._free.acquire()

    def reserve(self, most: int) -> int:
        """Acquire up to `most` without waiting; returns how many."""
        n = 0
        while n < most and self._free.value:
            self._free.acquire_nowait()
            n += 1
        return n

    def release(self, n: int) -> None:
        for _ in range(n):
            self._free.release()
        if n:
            self._freed.set()

    async def wait_free(self) -> int:
        """Wait until some is free; returns how much."""
        while not self._free.value:
            await self._freed.wait()
            self._freed = anyio.Event()
        return self._free.value
