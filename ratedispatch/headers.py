"""What an API's response headers say about where a client stands against its limits
(CONTRACT §9): how many calls remain, until when, and what its quota is.

Read, in the order a server is likeliest to mean them:

- `RateLimit-Policy` / `RateLimit`: the IETF httpapi rate-limit headers draft, structured fields
  (RFC 9651): `RateLimit-Policy: "hour";q=1000;w=3600` (a quota q per window w seconds, one
  item per policy) and `RateLimit: "hour";r=12;t=340` (r remain, reset in t seconds). Its
  earlier revisions' dictionary `RateLimit: limit=100, remaining=50, reset=5` too.
- The draft's older `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (delta seconds).
- `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (GitHub, Twitter, and many
  more): the reset is delta seconds, or epoch seconds when larger than a day, or epoch ms when
  larger than 10^12; `X-RateLimit-Reset-After` (delta seconds, Discord) wins over it.

A pure function of the headers and the wall clock. A header that is missing is not there; one that
is present but malformed or absurd (negative, beyond a week, not a number) is ignored and named in
`Announcement.ignored`, for a metric: never an error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from http_sf import parse as parse_sf

# Beyond these an announcement is a server's bug, not a limit to obey.
MAX_RESET_SECONDS = 7 * 86_400
MAX_CALLS = 10**9
# X-RateLimit-Reset above this is an epoch in seconds; above EPOCH_MS, in milliseconds.
DAY_SECONDS = 86_400
EPOCH_MS = 10**12
_LEADING_INT = re.compile(r"\s*(\d+)")


@dataclass(frozen=True, slots=True)
class Quota:
    """A quota the API states: `limit` calls per `window` seconds (None: not stated)."""

    limit: int
    window: float | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class Announcement:
    """Where the API says the client stands, as of the response that carried it."""

    remaining: int | None = None  # calls that remain before the reset
    reset: float | None = None  # seconds from the response until they are back
    quotas: tuple[Quota, ...] = ()
    ignored: tuple[str, ...] = field(default=())  # headers present but malformed or absurd

    @property
    def empty(self) -> bool:
        return self.remaining is None and not self.quotas


def read_announcement(headers: Mapping[str, str], now: float) -> Announcement:
    """The announcement in `headers` (names in any case); `now`: the wall clock (epoch seconds),
    to read an epoch reset."""
    lower = {name.lower(): value for name, value in headers.items()}
    ignored: list[str] = []
    remaining, reset = _draft_current(lower, ignored)
    quotas = _policies(lower, ignored)
    if remaining is None:
        remaining, reset, limit = _plain(lower, "ratelimit-", now, ignored, epoch=False)
        if limit is not None and not quotas:
            quotas = (Quota(limit),)
    if remaining is None:
        remaining, reset, limit = _plain(lower, "x-ratelimit-", now, ignored, epoch=True)
        if limit is not None and not quotas:
            quotas = (Quota(limit),)
    if remaining is not None and reset is None:
        remaining = None  # "r remain" without "until when" says nothing the fleet can keep to
    return Announcement(remaining, reset, quotas, tuple(ignored))


def _sf_list(text: str) -> list[tuple[object, dict[str, object]]]:
    """A structured-field List of items with their parameters; [] when it is not one."""
    try:
        parsed: Any = parse_sf(text.encode("latin-1"), tltype="list")
    except Exception:  # every malformed field is the same to us: ignored
        return []
    return [
        (member[0], member[1])
        for member in parsed
        if isinstance(member, tuple) and len(member) == 2 and isinstance(member[1], dict)
    ]


def _sf_dictionary(text: str) -> dict[str, object]:
    """A structured-field Dictionary's members' values; {} when it is not one."""
    try:
        parsed: Any = parse_sf(text.encode("latin-1"), tltype="dictionary")
    except Exception:
        return {}
    return {
        key: member[0]
        for key, member in parsed.items()
        if isinstance(member, tuple) and len(member) == 2
    }


def _draft_current(lower: Mapping[str, str], ignored: list[str]) -> tuple[int | None, float | None]:
    """`RateLimit` of the draft: the tightest of its policies, (remaining, reset)."""
    text = lower.get("ratelimit")
    if text is None:
        return None, None
    best: tuple[int, float] | None = None
    for _name, params in _sf_list(text):
        r, t = _count(params.get("r")), _seconds(params.get("t", 0))
        if r is not None and t is not None and (best is None or r < best[0]):
            best = (r, t)
    if best is None:
        best = _draft_dictionary(text)
    if best is None:
        ignored.append("RateLimit")
        return None, None
    return best


def _draft_dictionary(text: str) -> tuple[int, float] | None:
    """An earlier revision's `RateLimit: limit=100, remaining=50, reset=5`."""
    fields = _sf_dictionary(text)
    remaining, reset = _count(fields.get("remaining")), _seconds(fields.get("reset"))
    if remaining is None or reset is None:
        return None
    return remaining, reset


def _policies(lower: Mapping[str, str], ignored: list[str]) -> tuple[Quota, ...]:
    """`RateLimit-Policy`: each policy's quota q per window w."""
    text = lower.get("ratelimit-policy")
    if text is None:
        return ()
    quotas = []
    for name, params in _sf_list(text):
        limit, window = _count(params.get("q")), _seconds(params.get("w"))
        if limit is not None and window is not None and window > 0:
            quotas.append(Quota(limit, window, name if isinstance(name, str) else ""))
    if not quotas:
        ignored.append("RateLimit-Policy")
    return tuple(quotas)


def _plain(
    lower: Mapping[str, str], prefix: str, now: float, ignored: list[str], *, epoch: bool
) -> tuple[int | None, float | None, int | None]:
    """`<prefix>Limit`, `-Remaining`, `-Reset` (and `-Reset-After`): (remaining, reset, limit)."""
    names = {part: f"{prefix}{part}" for part in ("limit", "remaining", "reset", "reset-after")}
    if not any(name in lower for name in names.values()):
        return None, None, None
    limit = _header_count(lower, names["limit"], ignored)
    remaining = _header_count(lower, names["remaining"], ignored)
    reset = None
    if names["reset-after"] in lower:
        reset = _seconds(_number(lower[names["reset-after"]]))
        if reset is None:
            ignored.append(_title(names["reset-after"]))
    if reset is None and names["reset"] in lower:
        value = _number(lower[names["reset"]])
        if epoch and value is not None and value > EPOCH_MS:
            value = value / 1000 - now
        elif epoch and value is not None and value > DAY_SECONDS:
            value = value - now
        # An epoch a little in the past (the clocks differ): the window is over, now.
        reset = _seconds(max(value, 0.0) if value is not None and value > -60 else value)
        if reset is None:
            ignored.append(_title(names["reset"]))
    return remaining, reset, limit


def _header_count(lower: Mapping[str, str], name: str, ignored: list[str]) -> int | None:
    if name not in lower:
        return None
    match = _LEADING_INT.match(lower[name])  # "100" or "100, 100;w=60"
    count = _count(int(match.group(1))) if match else None
    if count is None:
        ignored.append(_title(name))
    return count


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _count(value: object) -> int | None:
    """A number of calls: a whole number from 0 to MAX_CALLS."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_CALLS else None


def _seconds(value: object) -> float | None:
    """A time from now: 0 to MAX_RESET_SECONDS (a structured field's decimal is a Decimal)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    seconds = float(value)
    return seconds if 0 <= seconds <= MAX_RESET_SECONDS else None


def _title(name: str) -> str:
    """`x-ratelimit-reset` -> `X-RateLimit-Reset`, as metric labels name them."""
    return "-".join("RateLimit" if p == "ratelimit" else p.upper() if p == "x" else p.title()
                    for p in name.split("-"))  # fmt: skip
