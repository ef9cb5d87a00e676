"""What a call's response or exception means: done, try again later, or give up."""

from __future__ import annotations

import contextlib
import enum
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from ..headers import Announcement, read_announcement

RETRYABLE_STATUSES = frozenset({408, 425, 429})
# The longest Retry-After honoured; a larger value (or a date years ahead) is a server bug,
# and obeying it would park a task and close the window for that long.
MAX_RETRY_AFTER_SECONDS = 3600.0


class Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The classification of one attempt."""

    verdict: Verdict
    last_status: str  # the HTTP status, or the exception's name when there was no response
    reason: str = ""
    http_status: int | None = None
    retry_after: float | None = None  # seconds the API asked us to wait
    announced: Announcement | None = None  # what its headers said of its limits, when read

    @property
    def rate_limited(self) -> bool:
        return self.http_status == 429


def classify_response(response: httpx.Response, *, read_headers: bool = False) -> Outcome:
    """What the response means; `read_headers`: read what it says of the API's limits too."""
    status = response.status_code
    announced = None
    if read_headers:
        announced = read_announcement(response.headers, time.time())
    if 200 <= status < 300:
        return Outcome(Verdict.OK, str(status), http_status=status, announced=announced)
    if status in RETRYABLE_STATUSES or status >= 500:
        return Outcome(
            Verdict.RETRY,
            str(status),
            reason=f"the API answered {status} {response.reason_phrase}".rstrip(),
            http_status=status,
            retry_after=parse_retry_after(response),
            announced=announced,
        )
    return Outcome(
        Verdict.DEAD,
        str(status),
        reason=(
            f"the API refused the request with {status} {response.reason_phrase}; "
            "fix the task and requeue it"
        ).replace("  ", " "),
        http_status=status,
        announced=announced,
    )


def classify_exception(exc: BaseException) -> Outcome:
    """Transport failures are retried: the API may never have seen the request."""
    name = type(exc).__name__
    detail = (str(exc) or name)[:300]
    return Outcome(Verdict.RETRY, name, reason=f"the call failed: {detail}")


def parse_retry_after(response: httpx.Response) -> float | None:
    """Seconds from `Retry-After` (delay-seconds or HTTP-date), or None when absent or bad.

    An HTTP-date is measured against the response's own `Date` header when there is one, so a
    worker whose clock is off still waits as long as the API meant.
    """
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    now = datetime.now(UTC)
    date_header = response.headers.get("date")
    if date_header:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            now = parsedate_to_datetime(date_header)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return min(max((when - now).total_seconds(), 0.0), MAX_RETRY_AFTER_SECONDS)


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(cap, base * 2 ** min(max(attempt - 1, 0), 62))
    return (rng or random).uniform(0.0, ceiling)


def retry_delay(
    outcome: Outcome, attempt: int, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """How long a retryable task waits: the backoff or the API's Retry-After, the longer."""
    delay = backoff(attempt, base, cap, rng)
    if outcome.retry_after is not None:
        delay = max(delay, outcome.retry_after)
    return delay
