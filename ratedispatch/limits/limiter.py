"""The fleet's limits: every term of RATEDISPATCH_LIMITS and MAX_IN_FLIGHT, where each stands,
and closing them after a 429.

Taking room is part of the queue's take script (queue/take.lua includes limits/limits.lua),
because room must be taken in the same atomic step as the task it is for; the scripts that record
answers settle the calls in the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from ..keys import Keys
from ..scripts import declare
from ..settings import Settings
from ..terms import Limits

# A call in flight is given up on (as if its worker died) this long after HTTP_TIMEOUT_SECONDS
# from its take. The worker ends it within HTTP_TIMEOUT_SECONDS of asking for the take, which
# is earlier; the margin covers the bytes of a request cut off at its deadline that are still
# on their way to the API, and a worker's clock that runs a little slow.
FLIGHT_MARGIN_SECONDS = 0.25
# The name MAX_IN_FLIGHT goes by beside the terms (status, metrics).
IN_FLIGHT_TERM = "max_in_flight"


@dataclass(frozen=True, slots=True)
class CloseKeys:
    rate: str
    terms: str


@dataclass(frozen=True, slots=True)
class CloseArgs:
    limits: str
    cooldown_ms: int
    counter: bool


@dataclass(frozen=True, slots=True)
class StateKeys:
    rate: str
    flight: str
    terms: str


@dataclass(frozen=True, slots=True)
class StateArgs:
    limits: str


CLOSE = declare("limits/close.lua", CloseKeys, CloseArgs)
STATE = declare("limits/state.lua", StateKeys, StateArgs)


@dataclass(frozen=True, slots=True)
class TermState:
    """Where one term stands: `used` of `limit` units busy (a window term: in flight, or
    answered less than D ago; a paced term: its bucket's level), the next freeing in
    `frees_in` seconds (None: nothing is waiting to free)."""

    term: str  # as written in LIMITS ("100/1m", "10/1s burst 3"), or "max_in_flight"
    used: int
    limit: int
    frees_in: float | None


@dataclass(frozen=True, slots=True)
class Window:
    """The fixed-window counter at RATE_KEY, of the first N/D term."""

    used: int
    limit: int
    resets_in: float | None  # seconds; None when no window is open

    @property
    def full(self) -> bool:
        return self.used >= self.limit


@dataclass(frozen=True, slots=True)
class LimitsState:
    window: Window | None  # None when no term is N/D
    terms: list[TermState]
    calls_in_flight: int  # across the fleet
    units_in_flight: int


def _seconds(ms: Any) -> float | None:
    return None if int(ms) < 0 else int(ms) / 1000


class Limiter:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        limits: Limits,
        *,
        max_in_flight: int = 0,
        call_deadline_seconds: float,
        key_limits: Limits | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.limits = limits
        self.spec = limits.encoded()
        self.max_cost = limits.max_cost
        # KEY_LIMITS, applied to each key on top of `limits` (queue/keyed.lua).
        self.key_limits = key_limits
        self.key_spec = key_limits.encoded() if key_limits is not None else ""
        self.key_max_cost = key_limits.max_cost if key_limits is not None else 0
        self.max_in_flight = max_in_flight
        self.deadline_ms = math.ceil((call_deadline_seconds + FLIGHT_MARGIN_SECONDS) * 1000)
        self._close = CLOSE.on(redis)
        self._state = STATE.on(redis)

    @classmethod
    def from_settings(cls, redis: Redis, keys: Keys, settings: Settings) -> Limiter:
        return cls(
            redis,
            keys,
            settings.limit_terms,
            max_in_flight=settings.max_in_flight,
            call_deadline_seconds=settings.http_timeout_seconds,
            key_limits=settings.key_terms,
        )

    def refusal(self, cost: int) -> str | None:
        """Why no term, of LIMITS or of KEY_LIMITS, could ever grant a call of `cost`."""
        refusal = self.limits.refusal(cost)
        if refusal is None and self.key_limits is not None:
            refusal = self.key_limits.refusal(cost)
            if refusal is not None:
                refusal = f"key_limits: {refusal}"
        return refusal

    async def close_for(self, seconds: float, key: str | None = None) -> float:
        """Close the limits for every worker for at least `seconds` (with `key`: that key's
        key_limits only); returns the seconds set."""
        ms = max(1, math.ceil(seconds * 1000))
        if key is not None:
            if self.key_limits is None:
                raise ValueError("only an API with key_field and key_limits has a key's limits")
            terms = self._keys.key_terms(key)
            args = CloseArgs(self.key_spec, ms, False)
            closed = await self._close(CloseKeys(terms, terms), args)
        else:
            args = CloseArgs(self.spec, ms, True)
            closed = await self._close(CloseKeys(self._keys.rate, self._keys.terms), args)
        return int(closed) / 1000

    async def state(self) -> LimitsState:
        rows = await self._state(
            StateKeys(self._keys.rate, self._keys.flight, self._keys.terms), StateArgs(self.spec)
        )
        *term_rows, (counter_used, counter_pttl), (calls, units) = rows
        terms = [
            TermState(str(term), int(used), int(limit), _seconds(frees))
            for term, (used, limit, frees) in zip(self.limits.terms, term_rows, strict=True)
        ]
        if self.max_in_flight:
            terms.append(TermState(IN_FLIGHT_TERM, int(calls), self.max_in_flight, None))
        window = None
        first = next((t for t in self.limits.terms if not t.paced), None)
        if first is not None:
            window = Window(int(counter_used), first.count, _seconds(counter_pttl))
        return LimitsState(window, terms, int(calls), int(units))
