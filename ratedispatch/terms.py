"""The limit terms of RATEDISPATCH_LIMITS as an API publishes them (`100/1m`, `10/1s burst 3`):
parsed, checked, shown, and encoded for the limit scripts (limits/limits.lua)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
MAX_DURATION_MS = 366 * UNITS["d"]
MAX_COUNT = 1_000_000_000

_TERM = re.compile(r"(?P<count>\S+?)\s*/\s*(?P<duration>\S+?)(?:\s+burst\s+(?P<burst>\S+))?")
_DURATION = re.compile(r"(?P<n>[0-9]+)(?P<unit>ms|s|m|h|d)")


def _count(text: str, what: str, term: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"term {term!r}: {what} {text!r} is not a whole number")
    value = int(text)
    if not 1 <= value <= MAX_COUNT:
        raise ValueError(f"term {term!r}: {what} must be 1 to {MAX_COUNT:,}, not {value}")
    return value


def _duration_ms(text: str, term: str) -> int:
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"term {term!r}: {text!r} is not a duration such as 250ms, 1s, 90s, 1m, 1h or 1d"
        )
    ms = int(match["n"]) * UNITS[match["unit"]]
    if not 0 < ms <= MAX_DURATION_MS:
        raise ValueError(f"term {term!r}: the duration must be more than 0 and at most 366d")
    return ms


def format_duration(ms: int) -> str:
    """`1000` -> `1s`, `90000` -> `90s`, `250` -> `250ms`: the largest unit that divides it."""
    for unit in ("d", "h", "m", "s"):
        if ms % UNITS[unit] == 0:
            return f"{ms // UNITS[unit]}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True, slots=True)
class Term:
    """`count/duration`: at most `count` units start in any interval of `duration_ms`; with a
    `burst`, paced: one unit every duration/count on average, at most `burst` at once."""

    count: int
    duration_ms: int
    burst: int | None = None

    @property
    def paced(self) -> bool:
        return self.burst is not None

    @property
    def capacity(self) -> int:
        """The largest cost this term can ever grant to one call."""
        return self.burst if self.burst is not None else self.count

    def __str__(self) -> str:
        text = f"{self.count}/{format_duration(self.duration_ms)}"
        return text if self.burst is None else f"{text} burst {self.burst}"

    @classmethod
    def parse(cls, text: str) -> Term:
        term = " ".join(text.split())
        match = _TERM.fullmatch(term)
        if match is None:
            raise ValueError(
                f"term {term!r} is not N/D or N/D burst B (e.g. 100/1m, 10/1s burst 3)"
            )
        count = _count(match["count"], "the count", term)
        duration = _duration_ms(match["duration"], term)
        burst = None if match["burst"] is None else _count(match["burst"], "the burst", term)
        return cls(count, duration, burst)

    def encoded(self) -> str:
        if self.burst is None:
            return f"w,{self.count},{self.duration_ms}"
        return f"p,{self.count},{self.duration_ms},{self.burst}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Every term a call must find room in, in the order they were written."""

    terms: tuple[Term, ...]

    @classmethod
    def parse(cls, text: str) -> Limits:
        parts = [part.strip() for part in text.split(",")]
        if not any(parts):
            raise ValueError("expected at least one term, e.g. 100/1m or 10/1s burst 3, 600/1m")
        if not all(parts):
            raise ValueError(f"an empty term in {text!r}: terms are separated by one comma")
        terms = tuple(Term.parse(part) for part in parts)
        windows = [term for term in terms if not term.paced]
        for index, term in enumerate(windows):
            for other in windows[:index]:
                if other.duration_ms == term.duration_ms:
                    raise ValueError(
                        f"the terms {str(other)!r} and {str(term)!r} have the same duration: "
                        "keep the smaller"
                    )
        return cls(terms)

    @classmethod
    def window(cls, count: int, seconds: float) -> Limits:
        """The one term of RATE_LIMIT per RATE_WINDOW_SECONDS."""
        return cls((Term(count, max(1, round(seconds * 1000))),))

    @property
    def max_cost(self) -> int:
        """The largest cost of a call that every term can grant."""
        return min(term.capacity for term in self.terms)

    def refusal(self, cost: int) -> str | None:
        """Why a call of `cost` can never start, or None if it can."""
        for term in self.terms:
            if cost > term.capacity:
                what = "burst" if term.paced else "limit"
                return (
                    f"cost {cost} is more than the term {term} can ever grant (its {what} is "
                    f"{term.capacity}): it would wait for ever"
                )
        return None

    def scaled(self, factor: float) -> Limits:
        """The terms with each N (and burst) times `factor`, never below 1, as RATE_ADAPT
        applies it (limits/adapt.lua)."""
        return Limits(
            tuple(
                Term(
                    max(math.floor(term.count * factor), 1),
                    term.duration_ms,
                    None if term.burst is None else max(math.floor(term.burst * factor), 1),
                )
                for term in self.terms
            )
        )

    def encoded(self) -> str:
        """For the limit scripts: `w,N,D_ms` or `p,N,D_ms,B` for each term, joined by `;`."""
        return ";".join(term.encoded() for term in self.terms)

    def __str__(self) -> str:
        return ", ".join(str(term) for term in self.terms)
