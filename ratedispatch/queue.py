"""Every stream, pending-list and index command: read, defer, take, settle, reclaim.

Ownership is the pending list (PEL) of the group. An entry is held by exactly one of:
the stream (not yet delivered); a worker's consumer (just read, or in its call); the
`waiting` consumer, mirrored by the priority index (`deferred`) or the backoff index
(`retry`); or nobody (acknowledged, dead-lettered). Every move between them is one script.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as rexc
from redis.asyncio import Redis

from . import _lua
from .connection import RedisGuard
from .errors import ConfigError
from .keys import Keys
from .limiter import Limiter
from .task import Priority

log = logging.getLogger("ratedispatch.worker")

# Retries moved back into the priority index by one take, at most: bounds the script's work.
PROMOTE_PER_TAKE = 1000


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def index_member(entry_id: str, priority: Priority) -> str:
    """The index member for an entry: sorts by priority rank, then exactly by entry id."""
    ms, _, seq = entry_id.partition("-")
    return f"{int(priority)}{int(ms):020d}-{int(seq or 0):020d}"


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    fields: dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Grant:
    """A slot taken and an entry claimed for this worker's call."""

    entry: Entry
    attempt: int  # this call's number, counted in Redis before the call
    member: str  # the entry's index member, to put it back for a retry


class TakeStatus(enum.Enum):
    GRANTED = 1
    FULL = 0
    EMPTY = 2


@dataclass(frozen=True, slots=True)
class Take:
    status: TakeStatus
    grants: list[Grant] = field(default_factory=list)
    # FULL: seconds until the window reopens. EMPTY: until the next retry is due (None: none).
    wait: float | None = None


def field_map(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


async def read_stream(
    redis: Redis, stream: str, count: int | None = None, end: str = "+"
) -> list[Entry]:
    """The entries of any stream (results, dead letters), oldest first, up to id `end`."""
    rows: Any = await redis.xrange(stream, max=end, count=count)
    return [Entry(as_text(entry_id), dict(fields)) for entry_id, fields in rows or []]


class Queue:
    """The group's view of the task stream, for one consumer."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        consumer: str,
        limiter: Limiter,
        guard: RedisGuard,
        *,
        results_maxlen: int = 100_000,
        delete_acked: bool = True,
    ) -> None:
        if consumer == keys.waiting_consumer:
            raise ConfigError(
                f"RATEDISPATCH_CONSUMER={consumer!r} is invalid: that name is reserved for "
                "the tasks waiting for a slot"
            )
        self._redis = redis
        self.keys = keys
        self.consumer = consumer
        self._limiter = limiter
        self._guard = guard
        self._results_maxlen = results_maxlen if keys.results else 0
        self._delete_acked = delete_acked
        self._take = redis.register_script(_lua.source("take", "common", "window"))
        self._ingest = redis.register_script(_lua.source("ingest", "common"))
        self._settle = redis.register_script(_lua.source("settle", "common"))

    async def ensure_group(self) -> None:
        """Create the group at id 0 (so earlier entries are not skipped); BUSYGROUP is fine."""
        try:
            await self._redis.xgroup_create(self.keys.stream, self.keys.group, "0", mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_new(self, count: int, block_ms: int) -> list[Entry]:
        """Entries never delivered before, now pending under this consumer."""

        async def op() -> Any:
            return await self._redis.xreadgroup(
                self.keys.group,
                self.consumer,
                {self.keys.stream: ">"},
                count=count,
                block=block_ms or None,
            )

        return self._entries(await self._guard.run(op, "reading new tasks"))

    async def read_own_pending(self, count: int, after: str = "0") -> list[Entry]:
        """Entries this consumer name already holds (after id `after`): left by a process that
        had the same name and stopped before it could index them."""

        async def op() -> Any:
            return await self._redis.xreadgroup(
                self.keys.group, self.consumer, {self.keys.stream: after}, count=count
            )

        return self._entries(await self._guard.run(op, "reading our own pending tasks"))

    @staticmethod
    def _entries(reply: Any) -> list[Entry]:
        entries: list[Entry] = []
        for _stream, rows in reply or []:
            for entry_id, fields in rows:
                # Redis 6.2 answered nil fields for a deleted entry; 7.x leaves it out.
                entries.append(Entry(as_text(entry_id), dict(fields or {})))
        return entries

    async def defer(self, items: Iterable[tuple[str, Priority]]) -> int:
        """Put entries this consumer holds into the priority index; returns the index size."""
        args: list[str] = [self.keys.group, self.consumer, self.keys.waiting_consumer]
        for entry_id, priority in items:
            args += [entry_id, index_member(entry_id, priority)]
        if len(args) == 3:
            return await self.waiting()

        async def op() -> Any:
            return await self._ingest(keys=[self.keys.stream, self.keys.deferred], args=args)

        _moved, size = await self._guard.run(op, "deferring tasks")
        return int(size)

    async def waiting(self) -> int:
        async def op() -> Any:
            return await self._redis.zcard(self.keys.deferred)

        return int(await self._guard.run(op, "counting waiting tasks"))

    async def take(self, want: int) -> Take:
        """Take up to `want` slots, each with the best waiting task (see lua/take.lua)."""
        keys = [
            self.keys.rate,
            self.keys.deferred,
            self.keys.retry,
            self.keys.stream,
            self.keys.attempts,
        ]
        args: list[str | int] = [
            self._limiter.limit,
            self._limiter.window_ms,
            want,
            self.keys.group,
            self.consumer,
            self.keys.waiting_consumer,
            PROMOTE_PER_TAKE,
        ]

        async def op() -> Any:
            return await self._take(keys=keys, args=args)

        status, payload = await self._guard.run(op, "taking a slot")
        if status == 1:
            grants = [
                Grant(Entry(as_text(i), field_map(flat)), int(attempt), as_text(member))
                for i, flat, attempt, member in payload
            ]
            return Take(TakeStatus.GRANTED, grants)
        wait = int(payload)
        if status == 0:
            return Take(TakeStatus.FULL, wait=max(wait, 0) / 1000)
        return Take(TakeStatus.EMPTY, wait=None if wait < 0 else wait / 1000)

    async def ack(self, entry_id: str, *, http_status: int, duration_ms: int) -> bool:
        """Done: acknowledge (and delete), with a result. False if the entry was not ours."""
        return await self._settle_op(entry_id, "ok", http_status=http_status, duration=duration_ms)

    async def retry_later(self, entry_id: str, member: str, delay: float) -> bool:
        """Back to waiting until `delay` seconds (Redis time) have passed."""
        return await self._settle_op(entry_id, "retry", delay_ms=round(delay * 1000), member=member)

    async def bury(
        self,
        entry_id: str,
        reason: str,
        *,
        last_status: str,
        http_status: int | None = None,
        duration_ms: int = 0,
        attempts: int | None = None,
    ) -> bool:
        """Dead-letter with the reason (keeping every original field), and record a result."""
        recorded = await self._settle_op(
            entry_id,
            "dead",
            http_status=http_status,
            duration=duration_ms,
            reason=reason,
            last_status=last_status,
            attempts=attempts,
        )
        if recorded:
            log.warning("task %s dead-lettered: %s", entry_id, reason)
        return recorded

    async def _settle_op(
        self,
        entry_id: str,
        mode: str,
        *,
        http_status: int | None = None,
        duration: int = 0,
        delay_ms: int = 0,
        member: str = "",
        reason: str = "",
        last_status: str = "",
        attempts: int | None = None,
    ) -> bool:
        keys = [
            self.keys.stream,
            self.keys.attempts,
            self.keys.retry,
            self.keys.results or self.keys.stream,
            self.keys.dead,
        ]
        args = [
            self.keys.group,
            self.consumer,
            self.keys.waiting_consumer,
            entry_id,
            mode,
            "" if http_status is None else http_status,
            duration,
            self._results_maxlen,
            1 if self._delete_acked else 0,
            delay_ms,
            member,
            reason,
            last_status,
            "" if attempts is None else attempts,
        ]

        async def op() -> Any:
            return await self._settle(keys=keys, args=args)

        return bool(await self._guard.run(op, f"recording a task as {mode}"))
