"""The fixed-window limiter at RATE_KEY: its state, and closing it after a 429.

Taking a slot is part of the queue's take script (lua/take.lua with lua/window.lua), because a
slot must be taken in the same atomic step as the task it is for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis

from . import _lua


@dataclass(frozen=True, slots=True)
class Window:
    used: int
    limit: int
    resets_in: float | None  # seconds; None when no window is open

    @property
    def full(self) -> bool:
        return self.used >= self.limit


class Limiter:
    def __init__(self, redis: Redis, rate_key: str, limit: int, window_seconds: float) -> None:
        self._redis = redis
        self._key = rate_key
        self.limit = limit
        self.window_ms = max(1, round(window_seconds * 1000))
        self._close = redis.register_script(_lua.source("close"))

    async def close_for(self, seconds: float) -> float:
        """Close the window for every worker for at least `seconds`; returns the seconds set."""
        ms = max(1, math.ceil(seconds * 1000))
        pttl = await self._close(keys=[self._key], args=[self.limit, ms])
        return int(pttl) / 1000

    async def window(self) -> Window:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._key)
            pipe.pttl(self._key)
            raw, pttl = await pipe.execute()
        try:
            used = int(raw) if raw is not None else 0
        except ValueError:
            used = self.limit
        return Window(used, self.limit, int(pttl) / 1000 if int(pttl) >= 0 else None)
