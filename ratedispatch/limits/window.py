"""The limit at RATE_KEY: the fixed-window counter and the slot log beside it (limit.lua),
their state, and closing the window after a 429.

Taking a slot is part of the queue's take script (queue/take.lua includes limits/limit.lua),
because a slot must be taken in the same atomic step as the task it is for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis

from ..keys import Keys
from ..scripts import declare
from ..settings import Settings


@dataclass(frozen=True, slots=True)
class CloseKeys:
    rate: str


@dataclass(frozen=True, slots=True)
class CloseArgs:
    limit: int
    cooldown_ms: int


CLOSE = declare("limits/close.lua", CloseKeys, CloseArgs)


@dataclass(frozen=True, slots=True)
class Window:
    used: int
    limit: int
    resets_in: float | None  # seconds; None when no window is open
    # Slots whose calls are in flight or were answered less than a window ago (the log).
    slots_busy: int = 0
    slot_frees_in: float | None = None  # seconds until the first busy slot frees; None: none

    @property
    def full(self) -> bool:
        return self.used >= self.limit


class Limiter:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        limit: int,
        window_seconds: float,
        call_deadline_seconds: float,
    ) -> None:
        self._redis = redis
        self._key = keys.rate
        self._slots = keys.slots
        self.limit = limit
        self.window_ms = max(1, round(window_seconds * 1000))
        # A slot whose call is in flight is held this long plus a window: the latest the call
        # can end, should its worker die before saying when it did.
        self.deadline_ms = max(1, math.ceil(call_deadline_seconds * 1000))
        self._close = CLOSE.on(redis)

    @classmethod
    def from_settings(cls, redis: Redis, keys: Keys, settings: Settings) -> Limiter:
        return cls(
            redis,
            keys,
            settings.rate_limit,
            settings.rate_window_seconds,
            settings.http_timeout_seconds,
        )

    async def close_for(self, seconds: float) -> float:
        """Close the window for every worker for at least `seconds`; returns the seconds set."""
        ms = max(1, math.ceil(seconds * 1000))
        pttl = await self._close(CloseKeys(self._key), CloseArgs(self.limit, ms))
        return int(pttl) / 1000

    async def window(self) -> Window:
        # Plain pipelines, not MULTI: Redis refuses every command queued in a transaction while
        # it is out of memory, and `status` must answer then most of all. The reads are a
        # moment apart at most, which a picture of the window can afford.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._key)
            pipe.pttl(self._key)
            pipe.time()
            raw, pttl, (seconds, micros) = await pipe.execute()
        now_ms = seconds * 1000 + micros // 1000  # Redis's clock, as the scripts read it
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcount(self._slots, f"({now_ms}", "+inf")
            pipe.zrangebyscore(self._slots, f"({now_ms}", "+inf", start=0, num=1, withscores=True)
            busy, first = await pipe.execute()
        try:
            used = int(raw) if raw is not None else 0
        except ValueError:
            used = self.limit
        return Window(
            used,
            self.limit,
            int(pttl) / 1000 if int(pttl) >= 0 else None,
            int(busy),
            (first[0][1] - now_ms) / 1000 if first else None,
        )
