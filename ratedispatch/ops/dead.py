"""Dead letters: list them, put them back on the task stream, purge them, a batch at a time.

A walk reads the stream with `XRANGE … COUNT`, going on after the last id it saw with an
exclusive start (`(id`), so memory stays one batch whatever the stream holds, and a walk that
deletes as it goes (requeue) never sees a letter twice. Purging sends nothing back: XTRIM MINID
deletes in Redis. https://redis.io/docs/latest/commands/xrange/#exclusive-ranges
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from ..errors import RatedispatchError
from ..keys import Keys
from ..scripts import declare

BATCH = 1000  # letters per round trip: memory for one batch, a few ms of Redis per script call
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
# A whole entry id. XRANGE would take `1700000000000` alone as the range of every id in that
# millisecond, and XDEL as `…-0`: requeue could copy one letter and delete another.
_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


@dataclass(frozen=True, slots=True)
class RequeueKeys:
    dead: str
    stream: str


@dataclass(frozen=True, slots=True)
class RequeueArgs:
    ids: Sequence[str]


REQUEUE = declare("ops/requeue.lua", RequeueKeys, RequeueArgs)


class UnknownDeadLetter(RatedispatchError):
    """A dead letter id that is not in the dead-letter stream."""


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `12h`, `7d`, `2w` -> seconds; ValueError with the expected form."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"duration {text!r} is not a number and a unit (s, m, h, d, w), e.g. 7d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return value


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    fields: dict[str, str]  # every field, decoded (undecodable bytes shown as \\x..)

    @classmethod
    def from_row(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
        return cls(_text(entry_id), {_text(k): _text(v) for k, v in fields.items()})

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "fields": self.fields}


@dataclass(frozen=True, slots=True)
class Requeued:
    """What became of one id given to `requeue_many`: its new task id, or why it has none."""

    dead_id: str
    new_id: str | None
    error: str | None = None  # the sentence for stderr when new_id is None


NOTHING = "0-1"  # an id no letter is below (0-0 cannot be written)


def _after(entry_id: str) -> str:
    """The id right after `entry_id`."""
    ms, seq = (int(part) for part in entry_id.split("-"))
    return f"{ms}-{seq + 1}" if seq < 2**64 - 1 else f"{ms + 1}-0"


@dataclass(frozen=True, slots=True)
class Span:
    """The letters a command works on, fixed when it starts: `count` of them, the ids below
    `below`. Fixing the end keeps `requeue --all` from chasing its own tail: a requeued task
    that fails again is dead-lettered again, past the end, and is left for the next run."""

    count: int
    below: str  # an entry id: the letters are those before it (XTRIM's MINID)

    @property
    def end(self) -> str:
        """The XRANGE end of the span."""
        return f"({self.below}"


Rows = list[tuple[bytes, dict[bytes, bytes]]]


class DeadLetters:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._requeue = REQUEUE.on(redis)

    @property
    def stream(self) -> str:
        return self._keys.dead

    async def _rows(
        self,
        *,
        end: str = "+",
        limit: int | None = None,
        batch: int = BATCH,
        back_to: str | None = None,
    ) -> AsyncGenerator[Rows, None]:
        """Raw entries up to `end` (at most `limit`), oldest first, `batch` at a time; or, given
        `back_to`, newest first from `end` back to `back_to`."""
        start, left = "-" if back_to is None else end, limit
        while left is None or left > 0:
            want = batch if left is None else min(batch, left)
            rows: Any
            if back_to is None:
                rows = await self._redis.xrange(self._keys.dead, min=start, max=end, count=want)
            else:
                rows = await self._redis.xrevrange(
                    self._keys.dead, max=start, min=back_to, count=want
                )
            if not rows:
                return
            yield rows
            if len(rows) < want:
                return
            start = f"({_text(rows[-1][0])}"
            if left is not None:
                left -= len(rows)

    async def walk(
        self, *, end: str = "+", limit: int | None = None, batch: int = BATCH
    ) -> AsyncIterator[list[DeadLetter]]:
        """The letters up to `end` (at most `limit`), oldest first, `batch` at a time."""
        async for rows in self._rows(end=end, limit=limit, batch=batch):
            yield [DeadLetter.from_row(entry_id, fields) for entry_id, fields in rows]

    async def ids(self, span: Span, *, batch: int = BATCH) -> AsyncIterator[list[str]]:
        """The ids of the letters in `span`, oldest first, `batch` at a time (not decoding the
        letters: half the time of a walk)."""
        async for rows in self._rows(end=span.end, batch=batch):
            yield [_text(entry_id) for entry_id, _ in rows]

    async def oldest(self, count: int | None = None) -> list[DeadLetter]:
        """The oldest `count` dead letters (all when None: in memory, so for small streams)."""
        return [letter async for letters in self.walk(limit=count) for letter in letters]

    async def everything(self) -> Span:
        """Every letter there is now (XLEN and the last id read in one transaction)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xlen(self._keys.dead)
            pipe.xrevrange(self._keys.dead, count=1)
            length, last = await pipe.execute()
        return Span(int(length), _after(_text(last[0][0])) if last else NOTHING)

    async def older_than(
        self, seconds: float, *, batch: int = BATCH, counted: Callable[[int], None] | None = None
    ) -> Span:
        """The letters that failed more than `seconds` ago, and how many (each batch read
        while counting is also given to `counted`, for a progress bar).

        Counted from both ends, a batch from each in turn, without keeping any: the older
        letters from the start, the newer from the end, until one side runs out. `purge
        --older-than 7d` mostly leaves a few recent letters, so the count costs what they do."""
        # A dead letter's id is the time it was written (Redis's clock): the ids before the
        # cutoff's are exactly the older letters.
        below = await self.before(seconds)
        now = await self.everything()
        if now.count == 0 or below == NOTHING:
            return Span(0, below)
        sides = [
            self._rows(end=f"({below}", batch=batch),
            self._rows(end=now.end, back_to=below, batch=batch),
        ]
        read = [0, 0]
        try:
            while True:
                for side, rows in enumerate(sides):
                    got: Rows = await anext(rows, [])
                    read[side] += len(got)
                    if counted is not None and got:
                        counted(len(got))
                    if len(got) < batch:  # this side is all read
                        older = read[0] if side == 0 else now.count - read[1]
                        return Span(max(0, older), below)
        finally:
            for rows in sides:
                await rows.aclose()

    async def count_older_than(self, seconds: float | None) -> int:
        span = await (self.everything() if seconds is None else self.older_than(seconds))
        return span.count

    async def requeue_many(self, ids: Sequence[str], *, batch: int = BATCH) -> list[Requeued]:
        """Put dead letters back as new tasks, `batch` per script call, each one atomically."""
        done: list[Requeued] = []
        for first in range(0, len(ids), batch):
            chunk = ids[first : first + batch]
            valid = [dead_id for dead_id in chunk if _ENTRY_ID.match(dead_id)]
            replies: Any = []
            if valid:
                replies = await self._requeue(
                    RequeueKeys(self._keys.dead, self._keys.stream), RequeueArgs(valid)
                )
            answers = iter(replies)  # one row per id sent, in order
            for dead_id in chunk:
                sent = _ENTRY_ID.match(dead_id)
                done.append(self._answer(dead_id, next(answers)[1:] if sent else None))
        return done

    def _answer(self, dead_id: str, answer: list[Any] | None) -> Requeued:
        if answer is None:
            return Requeued(dead_id, None, f"{dead_id!r} is not a stream entry id")
        new_id, *why = answer
        if new_id is not None:
            return Requeued(dead_id, _text(new_id))
        reason = _text(why[0]) if why else "?"
        if reason == "unknown":
            error = f"no dead letter with id {dead_id} in {self._keys.dead}"
        elif reason == "empty":
            error = f"dead letter {dead_id} has no original fields to requeue"
        elif reason == "too_many_fields":
            error = f"dead letter {dead_id} has more fields than a task can have; not requeued"
        else:
            raise RatedispatchError(f"requeue.lua answered {reason!r} for {dead_id}, unknown")
        return Requeued(dead_id, None, error)

    async def requeue(self, dead_id: str) -> str:
        """Put one dead letter back as a new task; returns the new entry id."""
        [done] = await self.requeue_many([dead_id])
        if done.new_id is None:
            raise UnknownDeadLetter(done.error)
        return done.new_id

    async def purge_batches(self, span: Span, *, batch: int = BATCH) -> AsyncIterator[int]:
        """Delete the letters of `span`, about `batch` a call; yields how many each call took.

        XTRIM MINID deletes in Redis, sending nothing back; with `~` and LIMIT it takes only
        whole nodes of the stream (100 entries each by default) up to LIMIT entries, which is
        what bounds each call; the exact XTRIM at the end takes the part of a node left over.
        https://redis.io/docs/latest/commands/xtrim/"""
        while n := int(
            await self._redis.xtrim(
                self._keys.dead, minid=span.below, approximate=True, limit=batch
            )
        ):
            yield n
        if n := int(await self._redis.xtrim(self._keys.dead, minid=span.below, approximate=False)):
            yield n

    async def purge(self, seconds: float | None = None, *, batch: int = BATCH) -> int:
        """Delete dead letters (only those failed more than `seconds` ago); returns how many."""
        span = await self.everything() if seconds is None else Span(0, await self.before(seconds))
        return sum([n async for n in self.purge_batches(span, batch=batch)])

    async def before(self, seconds: float) -> str:
        """The id below which the letters were written more than `seconds` ago, by Redis's
        clock."""
        now_s, now_us = await self._redis.time()
        cutoff = int(now_s) * 1000 + int(now_us) // 1000 - round(seconds * 1000)
        return f"{cutoff}-0" if cutoff > 0 else NOTHING
