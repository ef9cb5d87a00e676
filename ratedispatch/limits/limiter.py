"""The fleet's limits: every term of RATEDISPATCH_LIMITS and MAX_IN_FLIGHT, where each stands,
and closing them after a 429.

Taking room is part of the queue's take script (queue/take.lua includes limits/limits.lua),
because room must be taken in the same atomic step as the task it is for; the scripts that record
answers settle the calls in the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from ..headers import Announcement
from ..keys import Keys
from ..scripts import declare
from ..settings import Settings
from ..terms import Limits, Term

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
    lower: bool


@dataclass(frozen=True, slots=True)
class AnnounceKeys:
    terms: str
    flight: str


@dataclass(frozen=True, slots=True)
class AnnounceArgs:
    limits: str
    as_of: str
    member: str
    remaining: int
    reset_ms: int
    ago_ms: int
    quotas: str


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
ANNOUNCE = declare("limits/announce.lua", AnnounceKeys, AnnounceArgs)
# The most quotas of one announcement the fleet carries: each is a term every take reads.
MAX_QUOTAS = 4


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
class Heard:
    """What the fleet keeps of the API's announcements (limits/heard.lua)."""

    remaining: int | None  # the calls the API said remain (None: it never said)
    left: int  # how many more the fleet may start before the reset
    reset_in: float | None  # seconds; None when no reset is in force
    quotas: tuple[Term, ...]  # the quotas the fleet carries
    age: float | None = None  # seconds since the newest was heard (status)

    @property
    def limit(self) -> int | None:
        """The API's quota, as `api_limit` shows it: the first it stated."""
        return self.quotas[0].count if self.quotas else None


@dataclass(frozen=True, slots=True)
class Compared:
    """Our own count in the term of LIMITS with the API's quota's window: `busy` of `limit`."""

    busy: int
    limit: int


@dataclass(frozen=True, slots=True)
class LimitsState:
    window: Window | None  # None when no term is N/D
    terms: list[TermState]
    calls_in_flight: int  # across the fleet
    units_in_flight: int
    heard: Heard | None = None  # None: nothing heard
    # RATE_ADAPT's factor on every term of LIMITS (1.0: not lowered; None: adapt is off).
    adapt: float | None = None
    carried: list[TermState] = field(default_factory=list)  # the quotas carried, as terms


def _seconds(ms: Any) -> float | None:
    return None if int(ms) < 0 else int(ms) / 1000


def _quotas(text: Any) -> tuple[Term, ...]:
    """`N/D_ms,...` as the scripts keep them."""
    raw = text.decode() if isinstance(text, bytes) else str(text)
    quotas = []
    for part in filter(None, raw.split(",")):
        count, _, ms = part.partition("/")
        quotas.append(Term(int(count), int(ms)))
    return tuple(quotas)


def _heard(row: Any, age: Any = None) -> Heard:
    said, left, reset_in, quotas = row[:4]
    return Heard(
        None if int(said) < 0 else int(said),
        int(left),
        _seconds(reset_in),
        _quotas(quotas),
        None if age is None else int(age) / 1000,
    )


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
        obey: bool = False,
        adapt: bool = False,
    ) -> None:
        """`obey`: keep to what the API announces (limits/heard.lua); `adapt`: find its limits
        from its 429s (limits/adapt.lua)."""
        self._redis = redis
        self._keys = keys
        self.limits = limits
        self.obey = obey
        self.adapt = adapt
        self.spec = limits.encoded() + (";h" if obey else "") + (";a" if adapt else "")
        self.max_cost = limits.max_cost
        # KEY_LIMITS, applied to each key on top of `limits` (queue/keyed.lua).
        self.key_limits = key_limits
        self.key_spec = key_limits.encoded() if key_limits is not None else ""
        self.key_max_cost = key_limits.max_cost if key_limits is not None else 0
        self.max_in_flight = max_in_flight
        self.deadline_ms = math.ceil((call_deadline_seconds + FLIGHT_MARGIN_SECONDS) * 1000)
        self._close = CLOSE.on(redis)
        self._state = STATE.on(redis)
        self._announce = ANNOUNCE.on(redis)

    @classmethod
    def from_settings(cls, redis: Redis, keys: Keys, settings: Settings) -> Limiter:
        return cls(
            redis,
            keys,
            settings.limit_terms,
            max_in_flight=settings.max_in_flight,
            call_deadline_seconds=settings.http_timeout_seconds,
            key_limits=settings.key_terms,
            obey=settings.rate_headers == "obey",
            adapt=settings.rate_adapt,
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
        closed, _ = await self.after_429(max(seconds, 0.001), key, lower=False)
        return closed

    async def after_429(
        self, seconds: float, key: str | None = None, *, lower: bool = True
    ) -> tuple[float, float]:
        """The API answered 429: close the limits for every worker for at least `seconds` (0:
        not at all; with `key`: that key's key_limits only), and with RATE_ADAPT (`lower`),
        lower the factor it found. Returns the seconds they are closed for, and that factor
        (1.0 without adapt)."""
        ms = max(1, math.ceil(seconds * 1000)) if seconds > 0 else 0
        if key is not None:
            if self.key_limits is None:
                raise ValueError("only an API with key_field and key_limits has a key's limits")
            terms = self._keys.key_terms(key)
            args = CloseArgs(self.key_spec, ms, False, False)
            closed, factor = await self._close(CloseKeys(terms, terms), args)
        else:
            args = CloseArgs(self.spec, ms, True, lower and self.adapt)
            keys = CloseKeys(self._keys.rate, self._keys.terms)
            closed, factor = await self._close(keys, args)
        return int(closed) / 1000, float(factor)

    async def announce(
        self, heard: Announcement, *, as_of: str, member: str, ago: float
    ) -> tuple[Heard, Compared | None]:
        """Keep what a response announced, for the whole fleet (limits/announce.lua): `as_of`
        is the take stamp of the call that carried it, `member` that call's in the flight,
        `ago` the seconds since its response. Returns what the fleet now keeps, and our own
        count in the term of LIMITS with the API's quota's window (None when none has it)."""
        quotas = ",".join(
            f"{quota.limit}/{0 if quota.window is None else math.ceil(quota.window * 1000)}"
            for quota in heard.quotas[:MAX_QUOTAS]
        )
        reset_ms = -1 if heard.reset is None else math.ceil(heard.reset * 1000)
        args = AnnounceArgs(
            self.spec,
            as_of,
            member,
            -1 if heard.remaining is None else heard.remaining,
            reset_ms,
            max(0, int(ago * 1000)),
            quotas,
        )
        row = await self._announce(AnnounceKeys(self._keys.terms, self._keys.flight), args)
        busy, limit = int(row[4]), int(row[5])
        return _heard(row), (Compared(busy, limit) if limit > 0 else None)

    async def state(self) -> LimitsState:
        rows = await self._state(
            StateKeys(self._keys.rate, self._keys.flight, self._keys.terms), StateArgs(self.spec)
        )
        count = len(self.limits.terms)
        term_rows, rest = rows[:count], rows[count:]
        (counter_used, counter_pttl), (calls, units), heard_row, adapt_row, *carried_rows = rest
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
        heard = _heard(heard_row, heard_row[4]) if heard_row else None
        carried = [
            TermState(f"api {quota}", int(used), int(limit), _seconds(frees))
            for quota, (used, limit, frees) in zip(
                heard.quotas if heard else (), carried_rows, strict=False
            )
        ]
        adapt = float(adapt_row[0]) if adapt_row else None
        return LimitsState(window, terms, int(calls), int(units), heard, adapt, carried)
