"""Every stream, pending-list and index command: read, defer, take, settle, reclaim.

Ownership is the pending list (PEL) of the group. An entry is held by exactly one of:
the stream (not yet delivered); a worker's consumer (just read, or in its call); the
`waiting` consumer, mirrored by the priority index (`deferred`) or the backoff index
(`retry`); or nobody (acknowledged, dead-lettered). Every move between them is one script.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as rexc
from redis.asyncio import Redis

from .. import scripts as _lua
from ..connection import RedisGuard
from ..errors import ConfigError
from ..keys import Keys
from ..limits.window import Limiter
from ..task import Priority, Task

log = logging.getLogger("ratedispatch.worker")

# Retries moved back into the priority index by one take, at most: bounds the script's work.
PROMOTE_PER_TAKE = 1000
# The most pending entries of one consumer a script lists to check what it holds. The reply is
# what the consumer really holds in an id range (calls in flight, a read batch), far below this.
PENDING_BOUND = 100_000
# Entries acknowledged by one script call, at most (Lua's unpack stops near 8000 values).
ACK_BATCH = 500


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def index_member(entry_id: str, priority: Priority) -> str:
    """The index member for an entry: sorts by priority rank, then exactly by entry id."""
    ms, seq = id_key(entry_id)
    return f"{int(priority)}{ms:020d}-{seq:020d}"


def ago_ms(then: float, now: float) -> int:
    """Whole ms from `then` to `now` (time.monotonic()), rounded down: a slot is held a
    window from its answer, and a late estimate of the answer only holds it longer."""
    return max(0, int((now - then) * 1000))


def id_key(entry_id: str) -> tuple[int, int]:
    """An entry id as (ms, seq), which sorts as Redis orders ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    fields: dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Grant:
    """A slot taken and an entry claimed for this worker's call."""

    entry: Entry
    attempt: int  # this call's number: the entry's delivery count, counted before the call
    member: str  # the entry's index member, to put it back for a retry
    # The take that gave it its slot; the slot log names the slot by entry id and this stamp
    # (slot_member in lua/window.lua), to be told when its call was answered.
    stamp: str
    task: Task | None = None  # parsed already (entries this worker just read)


class TakeStatus(enum.Enum):
    GRANTED = 1
    FULL = 0
    EMPTY = 2
    READ_ON = 4  # the fresh entries stay with the caller, to come back with its next read


@dataclass(frozen=True, slots=True)
class Take:
    status: TakeStatus
    grants: list[Grant] = field(default_factory=list)
    # FULL: seconds until a slot may be had. EMPTY: until the next retry is due (None: none).
    wait: float | None = None
    # GRANTED to fresh entries directly: nothing waited in the index or for a backoff.
    fast: bool = False


@dataclass(frozen=True, slots=True)
class Success:
    """A call that succeeded, to be acknowledged (in a batch) with its result."""

    entry_id: str
    http_status: int
    duration_ms: int
    attempts: int
    stamp: str  # of the take that gave its slot (Grant.stamp): busy a window from the answer
    answered_at: float = field(default_factory=time.monotonic)


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
        self._settle = redis.register_script(_lua.source("settle", "common", "window"))
        self._acks = redis.register_script(_lua.source("acks", "common", "window"))

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

    async def defer(self, items: Iterable[tuple[str, Priority]], *, reread: bool) -> int:
        """Put entries this consumer holds, and did not just read, into the priority index:
        reclaimed, or left by a previous process of the same name and read again (`reread`).
        Returns how many moved (those no longer ours stay where they are)."""
        members = [index_member(entry_id, priority) for entry_id, priority in items]
        if not members:
            return 0
        args: list[str | int] = [
            self.keys.group,
            self.consumer,
            self.keys.waiting_consumer,
            PENDING_BOUND,
            "reread" if reread else "kept",
        ]

        async def op() -> Any:
            return await self._ingest(
                keys=[self.keys.stream, self.keys.deferred], args=[*args, *members]
            )

        return int(await self._guard.run(op, "deferring tasks"))

    async def waiting(self) -> int:
        async def op() -> Any:
            return await self._redis.zcard(self.keys.deferred)

        return int(await self._guard.run(op, "counting waiting tasks"))

    async def take(
        self,
        want: int,
        fresh: Sequence[tuple[Entry, Task]] = (),
        *,
        drained: bool = False,
        keep: bool = False,
    ) -> Take:
        """Take up to `want` slots for the best tasks (see lua/take.lua). `fresh` are entries
        this consumer just read (`drained`: that read emptied the stream): called at once when
        nothing waits or competes with them, else put in the index; or, with `keep` and more
        unread, left with the caller (READ_ON) to bring back with what it reads next."""
        keys = [
            self.keys.rate,
            self.keys.deferred,
            self.keys.retry,
            self.keys.stream,
            self.keys.slots,
        ]
        by_member = {index_member(entry.id, task.priority): (entry, task) for entry, task in fresh}
        args: list[str | int] = [
            self._limiter.limit,
            self._limiter.window_ms,
            want,
            self.keys.group,
            self.consumer,
            self.keys.waiting_consumer,
            PROMOTE_PER_TAKE,
            PENDING_BOUND,
            1 if drained else "k" if keep else 0,
            self._limiter.deadline_ms,
            *sorted(by_member),  # best first: rank, then entry id
        ]

        async def op() -> Any:
            return await self._take(keys=keys, args=args)

        reply = await self._guard.run(op, "taking a slot")
        status = reply[0]
        if status == 3:
            fresh_by_id = {entry.id: (entry, task, m) for m, (entry, task) in by_member.items()}
            stamp = as_text(reply[2])
            grants = []
            for raw_id in reply[1]:
                entry, task, member = fresh_by_id[as_text(raw_id)]
                # Read by XREADGROUP: its first call.
                grants.append(Grant(entry, 1, member, stamp, task))
            return Take(TakeStatus.GRANTED, grants, fast=True)
        if status == 1:
            stamp = as_text(reply[2])
            grants = [
                Grant(Entry(as_text(i), field_map(flat)), int(attempt), as_text(member), stamp)
                for i, flat, attempt, member in reply[1]
            ]
            return Take(TakeStatus.GRANTED, grants)
        if status == 4:
            return Take(TakeStatus.READ_ON)
        wait = int(reply[1])
        if status == 0:
            return Take(TakeStatus.FULL, wait=max(wait, 0) / 1000)
        return Take(TakeStatus.EMPTY, wait=None if wait < 0 else wait / 1000)

    async def ack_many(self, successes: Sequence[Success]) -> list[bool]:
        """Acknowledge (and delete) entries whose calls succeeded, each with a result; False
        for an entry that was no longer ours. At most ACK_BATCH at once."""
        ids = sorted((s.entry_id for s in successes), key=id_key)
        args: list[str | int] = [
            self.keys.group,
            self.consumer,
            self._results_maxlen,
            1 if self._delete_acked else 0,
            ids[0],
            ids[-1],
            PENDING_BOUND,
            self._limiter.window_ms,
        ]
        keys = [self.keys.stream, self.keys.results or self.keys.stream, self.keys.slots]

        async def op() -> Any:
            # Each slot is busy a window from its answer, not from this script: the batch's
            # wait and round trip are not added to it. Measured anew for each attempt.
            now = time.monotonic()
            answers: list[str | int] = []
            for s in successes:
                answers += [s.entry_id, s.http_status, s.duration_ms, s.attempts, s.stamp]
                answers.append(ago_ms(s.answered_at, now))
            return await self._acks(keys=keys, args=[*args, *answers])

        recorded = await self._guard.run(op, "recording tasks as done")
        return [bool(r) for r in recorded]

    async def retry_later(
        self, entry_id: str, member: str, delay: float, *, stamp: str, answered: float
    ) -> bool:
        """Back to waiting until `delay` seconds (Redis time) have passed. The call on the slot
        taken at `stamp` was answered at `answered` (time.monotonic())."""
        return await self._settle_op(
            entry_id,
            "retry",
            delay_ms=round(delay * 1000),
            member=member,
            stamp=stamp,
            answered=answered,
        )

    async def bury(
        self,
        entry_id: str,
        reason: str,
        *,
        last_status: str,
        http_status: int | None = None,
        duration_ms: int = 0,
        attempts: int,
        stamp: str = "",
        answered: float | None = None,
    ) -> bool:
        """Dead-letter with the reason (keeping every original field), and record a result.
        `stamp`: of the take that gave it a slot, whose call was `answered` at that
        time.monotonic() (None: no call was made, the slot frees)."""
        recorded = await self._settle_op(
            entry_id,
            "dead",
            http_status=http_status,
            duration=duration_ms,
            reason=reason,
            last_status=last_status,
            attempts=attempts,
            stamp=stamp,
            answered=answered,
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
        attempts: int = 0,
        stamp: str = "",
        answered: float | None = None,
    ) -> bool:
        keys = [
            self.keys.stream,
            self.keys.retry,
            self.keys.results or self.keys.stream,
            self.keys.dead,
            self.keys.slots,
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
            attempts,
            stamp,
            -1,  # when the call was answered, set for each attempt
            self._limiter.window_ms,
        ]

        async def op() -> Any:
            if answered is not None:
                args[15] = ago_ms(answered, time.monotonic())
            return await self._settle(keys=keys, args=args)

        return bool(await self._guard.run(op, f"recording a task as {mode}"))
