"""The values the queue hands the worker: entries, grants, takes and successes; index members.

Index members are `<rank><ms:20 digits>-<seq:20 digits>`, then `*<cost>` for a task that costs
more than 1, then `#<key>` for a task of an API with a key_field: every member scores 0, so the
sorted set orders them by priority rank, then exactly by entry id (queue/members.lua reads them
back).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from redis.asyncio import Redis

from ..errors import RatedispatchError
from ..task import Priority, Task


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def id_key(entry_id: str) -> tuple[int, int]:
    """An entry id as (ms, seq), which sorts as Redis orders ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# The length of a member's rank and entry id, before its cost and key.
_MEMBER_ID_LENGTH = 42


def index_member(entry_id: str, priority: Priority, cost: int = 1, key: str | None = None) -> str:
    """The index member for an entry: sorts by priority rank, then exactly by entry id, and
    carries the task's cost, which the take script counts against the limit terms, and its key
    (None: its API has no key_field)."""
    ms, seq = id_key(entry_id)
    member = f"{int(priority)}{ms:020d}-{seq:020d}"
    if cost != 1:
        member += f"*{cost}"
    return member if key is None else f"{member}#{key}"


def _member_tail(member: str) -> tuple[str, str | None]:
    """The cost part (`*3` or '') and the key (None: none) of a member."""
    tail = member[_MEMBER_ID_LENGTH:]
    cost, hash_, key = tail.partition("#")
    return cost, key if hash_ else None


def member_cost(member: str) -> int:
    cost, _ = _member_tail(member)
    return int(cost[1:]) if cost.startswith("*") else 1


def member_key(member: str) -> str | None:
    return _member_tail(member)[1]


def field_map(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    fields: dict[bytes, bytes]


async def read_stream(
    redis: Redis, stream: str, count: int | None = None, end: str = "+"
) -> list[Entry]:
    """The entries of any stream (results, dead letters), oldest first, up to id `end`."""
    rows: Any = await redis.xrange(stream, max=end, count=count)
    return [Entry(as_text(entry_id), dict(fields)) for entry_id, fields in rows or []]


@dataclass(frozen=True, slots=True)
class Grant:
    """A slot taken and an entry claimed for this worker's call."""

    entry: Entry
    attempt: int  # this call's number: the entry's delivery count, counted before the call
    member: str  # the entry's index member, to put it back for a retry
    # The take that started its call; the flight names the call by entry id and this stamp
    # (flight_member in limits/flight.lua), to be told when it was answered.
    stamp: str
    task: Task | None = None  # parsed already (entries this worker just read)
    # time.monotonic() just before the take was asked for: the call must end within
    # HTTP_TIMEOUT_SECONDS of it, as the flight's deadline counts from the take.
    asked_at: float = 0.0

    @property
    def cost(self) -> int:
        return member_cost(self.member)

    @property
    def key(self) -> str:
        """Its key ('' for an API without a key_field)."""
        return member_key(self.member) or ""


class TakeReply(enum.IntEnum):
    """The first element of take.lua's reply, as its header lists them."""

    FULL = 0
    GRANTED = 1
    EMPTY = 2
    GRANTED_FRESH = 3
    READ_ON = 4


class TakeStatus(enum.Enum):
    GRANTED = "granted"
    FULL = "full"
    EMPTY = "empty"
    READ_ON = "read on"  # the fresh entries stay with the caller, to come back with its next read


class UnknownReply(RatedispatchError):
    """A script answered something this version does not know: scripts and code disagree."""


@dataclass(frozen=True, slots=True)
class Take:
    status: TakeStatus
    grants: list[Grant] = field(default_factory=list)
    # FULL: seconds until the best task may fit. EMPTY: until the next retry is due (None: none).
    wait: float | None = None
    # GRANTED to fresh entries directly: nothing waited in the index or for a backoff.
    fast: bool = False
    # For each success the take recorded: True, or False when its entry was no longer ours.
    recorded: list[bool] = field(default_factory=list)

    @classmethod
    def decode(
        cls, reply: Any, fresh: Sequence[tuple[str, Entry, Task]], asked_at: float = 0.0
    ) -> Take:
        """take.lua's reply; `fresh` are the (member, entry, task) the take was given, and
        `asked_at` when it was asked for (time.monotonic())."""
        try:
            recorded = [bool(int(r)) for r in reply[0]]
            code = TakeReply(int(reply[1][0]))
        except (ValueError, TypeError, IndexError):
            raise UnknownReply(f"take.lua answered {reply!r}: no such reply code") from None
        return replace(cls._decode(code, reply[1], fresh, asked_at), recorded=recorded)

    @classmethod
    def _decode(
        cls, code: TakeReply, reply: Any, fresh: Sequence[tuple[str, Entry, Task]], asked_at: float
    ) -> Take:
        if code is TakeReply.GRANTED_FRESH:
            by_id = {entry.id: (member, entry, task) for member, entry, task in fresh}
            stamp = as_text(reply[2])
            grants = []
            for raw_id in reply[1]:
                member, entry, task = by_id[as_text(raw_id)]
                # Read by XREADGROUP: its first attempt.
                grants.append(Grant(entry, 1, member, stamp, task, asked_at))
            return cls(TakeStatus.GRANTED, grants, fast=True)
        if code is TakeReply.GRANTED:
            stamp = as_text(reply[2])
            grants = [
                Grant(
                    Entry(as_text(i), field_map(flat)),
                    int(attempt),
                    as_text(member),
                    stamp,
                    asked_at=asked_at,
                )
                for i, flat, attempt, member in reply[1]
            ]
            return cls(TakeStatus.GRANTED, grants)
        if code is TakeReply.READ_ON:
            return cls(TakeStatus.READ_ON)
        wait = int(reply[1])
        if code is TakeReply.FULL:
            return cls(TakeStatus.FULL, wait=max(wait, 0) / 1000)
        return cls(TakeStatus.EMPTY, wait=None if wait < 0 else wait / 1000)


@dataclass(frozen=True, slots=True)
class Success:
    """A call that succeeded, to be acknowledged (in a batch) with its result."""

    entry_id: str
    http_status: int
    duration_ms: int
    attempts: int
    stamp: str  # of the take that started its call (Grant.stamp)
    answered_at: float = field(default_factory=time.monotonic)
    cost: int = 1
    key: str = ""  # its key, for an API with a key_field


def ago_ms(then: float, now: float) -> int:
    """Whole ms from `then` to `now` (time.monotonic()), rounded down: a call counts in the
    limit terms from its answer, and a late estimate of the answer only counts it longer."""
    return max(0, int((now - then) * 1000))
