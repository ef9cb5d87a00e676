"""What the API says of its limits, kept for the whole fleet (RATEDISPATCH_RATE_HEADERS).

Each response's headers are read (headers.py); what they announce is recorded in Redis by one
script (limits/announce.lua), which every take then keeps to with `obey`, or which `status` and
the gauges only show with `observe`. A lane records one announcement at a time: those that come
in meanwhile wait, and only the newest of them (by the take of the call that carried it) is
recorded next, since it supersedes the others. So a fast API costs at most one script per
round trip to Redis a lane, not one per call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..guard import RedisGuard
from ..headers import Announcement
from ..limits.limiter import Compared, Heard, Limiter
from .metrics import Metrics

log = logging.getLogger("ratedispatch.worker")

# The API's count and ours may differ by this much (of its quota, and at least MIN_MARGIN
# calls) before a line says so: calls in flight and answers on their way make them differ a
# little all the time.
MARGIN = 0.1
MIN_MARGIN = 2
# The most often one lane says that the API's view and ours disagree.
DISAGREE_EVERY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Said:
    """One response's announcement, and the call that carried it."""

    announced: Announcement
    stamp: str  # the take stamp of the call
    member: str  # the call's member in the flight (limits/flight.lua)
    answered: float  # time.monotonic() of its response


def flight_member(entry_id: str, stamp: str, cost: int) -> str:
    """The call's member in the flight, as limits/flight.lua names it."""
    return f"{entry_id}@{stamp}" if cost == 1 else f"{entry_id}@{stamp}*{cost}"


def _newer(a: str, b: str) -> bool:
    """Is take stamp `a` later than `b`? (µs of Redis time, all of one length.)"""
    return (len(a), a) > (len(b), b)


class Listener:
    """One lane's ear for what its API announces."""

    def __init__(
        self,
        limiter: Limiter,
        guard: RedisGuard,
        metrics: Metrics,
        api: str,
        credential: str = "",
    ) -> None:
        self._limiter = limiter
        self._guard = guard
        self._metrics = metrics
        self._api = api
        self._where = f"API {api!r}" + (f" (credential {credential})" if credential else "")
        self._busy = False
        self._next: Said | None = None
        self._disagreed_at = float("-inf")

    async def heard(self, said: Said) -> None:
        """Record what a response announced; returns at once when a record is under way."""
        for header in said.announced.ignored:
            self._metrics.rate_headers_ignored.labels(self._api, header).inc()
        if said.announced.empty:
            return
        if self._busy:
            if self._next is None or _newer(said.stamp, self._next.stamp):
                self._next = said
            return
        self._busy = True
        try:
            next_said: Said | None = said
            while next_said is not None:
                await self._record(next_said)
                next_said, self._next = self._next, None
        finally:
            self._busy = False

    async def _record(self, said: Said) -> None:
        heard, ours = await self._guard.run(
            lambda: self._limiter.announce(
                said.announced,
                as_of=said.stamp,
                member=said.member,
                ago=time.monotonic() - said.answered,
            ),
            "recording what the API announced",
        )
        if ours is not None:
            self._compare(heard, ours)

    def _compare(self, heard: Heard, ours: Compared) -> None:
        """Say so when the API counts far more calls in its window than we do: another client
        spends the same quota, or LIMITS is above what the API allows."""
        limit = heard.limit
        if limit is None or heard.remaining is None:
            return
        theirs = limit - heard.remaining
        margin = max(MIN_MARGIN, round(MARGIN * limit))
        now = time.monotonic()
        if theirs <= ours.busy + margin and limit + margin >= ours.limit:
            return
        if now - self._disagreed_at < DISAGREE_EVERY_SECONDS:
            return
        self._disagreed_at = now
        log.warning(
            "%s says %d of its %d calls are spent; our limits count %d of %d in the same "
            "window: another client may spend the same quota, or LIMITS is above the API's",
            self._where,
            theirs,
            limit,
            ours.busy,
            ours.limit,
        )
