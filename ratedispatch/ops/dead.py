"""Dead letters: list them, put them back on the task stream, purge them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rexc
from redis.asyncio import Redis

from .. import scripts as _lua
from ..errors import RatedispatchError
from ..keys import Keys
from ..queue.queue import Entry, read_stream

ADDED_FIELDS = ("original_id", "reason", "attempts", "last_status", "failed_at")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class UnknownDeadLetter(RatedispatchError):
    """A dead letter id that is not in the dead-letter stream."""


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `12h`, `7d`, `2w` -> seconds; ValueError with the expected form."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"duration {text!r} is not a number and a unit (s, m, h, d, w), e.g. 7d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    fields: dict[str, str]  # every field, decoded (undecodable bytes shown as \\x..)

    @classmethod
    def from_entry(cls, entry: Entry) -> DeadLetter:
        def text(value: bytes) -> str:
            return value.decode("utf-8", errors="backslashreplace")

        return cls(entry.id, {text(k): text(v) for k, v in entry.fields.items()})

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "fields": self.fields}


class DeadLetters:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._requeue = redis.register_script(_lua.source("requeue"))

    async def oldest(self, count: int | None = None) -> list[DeadLetter]:
        """The oldest `count` dead letters (all when None)."""
        entries = await read_stream(self._redis, self._keys.dead, count)
        return [DeadLetter.from_entry(e) for e in entries]

    async def requeue(self, dead_id: str) -> str:
        """Put one dead letter back as a new task; returns the new entry id."""
        try:
            new_id = await self._requeue(keys=[self._keys.dead, self._keys.stream], args=[dead_id])
        except rexc.ResponseError as exc:
            if "Invalid stream ID" in str(exc):
                raise UnknownDeadLetter(f"{dead_id!r} is not a stream entry id") from None
            raise RatedispatchError(str(exc).split(" script:")[0]) from None
        if new_id is None:
            raise UnknownDeadLetter(f"no dead letter with id {dead_id} in {self._keys.dead}")
        return new_id.decode() if isinstance(new_id, bytes) else str(new_id)

    async def count_older_than(self, seconds: float | None) -> int:
        if seconds is None:
            return int(await self._redis.xlen(self._keys.dead))
        cutoff = await self._cutoff(seconds)
        return len(await read_stream(self._redis, self._keys.dead, end=f"({cutoff}"))

    async def purge(self, seconds: float | None = None) -> int:
        """Delete dead letters (only those failed more than `seconds` ago); returns how many."""
        if seconds is None:
            before = int(await self._redis.xlen(self._keys.dead))
            await self._redis.delete(self._keys.dead)
            return before
        # A dead letter's id is the time it was written: MINID trims exactly the older ones.
        cutoff = await self._cutoff(seconds)
        return int(await self._redis.xtrim(self._keys.dead, minid=cutoff, approximate=False))

    async def _cutoff(self, seconds: float) -> int:
        now_s, now_us = await self._redis.time()
        return max(0, int(now_s) * 1000 + int(now_us) // 1000 - round(seconds * 1000))
