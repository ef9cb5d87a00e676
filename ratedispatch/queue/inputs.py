"""The inputs of the queue's scripts, named and ordered as each script's header names them
(tests/test_scripts.py holds the two together)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..scripts import declare


@dataclass(frozen=True, slots=True)
class StreamKey:
    stream: str


@dataclass(frozen=True, slots=True)
class TakeKeys:
    rate: str
    index: str
    retry: str
    stream: str
    flight: str
    terms: str
    results: str


# (id, http_status, duration_ms, attempts, stamp, cost, answered ms ago, key) of a call that
# succeeded
SuccessArgs = tuple[str, int, int, int, str, int, int, str]


@dataclass(frozen=True, slots=True)
class TakeArgs:
    limits: str
    max_in_flight: int
    max_cost: int
    want: int
    group: str
    me: str
    waiting: str
    promote_max: int
    pending_bound: int
    drained: bool
    keep: bool
    deadline_ms: int
    results_maxlen: int
    delete_acked: bool
    lowest: str
    highest: str
    succeeded: int
    prefix: str
    key_limits: str
    key_max_cost: int
    weighted: bool
    successes_then_fresh: Sequence[SuccessArgs | str]


@dataclass(frozen=True, slots=True)
class IndexKeys:
    stream: str
    index: str


@dataclass(frozen=True, slots=True)
class IndexArgs:
    group: str
    me: str
    waiting: str
    pending_bound: int
    reread: bool
    prefix: str
    members: Sequence[str]


@dataclass(frozen=True, slots=True)
class RetryKeys:
    stream: str
    retry: str
    flight: str
    terms: str


@dataclass(frozen=True, slots=True)
class RetryArgs:
    group: str
    me: str
    waiting: str
    id: str
    member: str
    delay_ms: int
    stamp: str
    cost: int
    answered_ago_ms: int
    limits: str
    prefix: str
    key_limits: str
    key: str


@dataclass(frozen=True, slots=True)
class BuryKeys:
    stream: str
    results: str
    dead: str
    flight: str
    terms: str


@dataclass(frozen=True, slots=True)
class BuryArgs:
    group: str
    me: str
    id: str
    reason: str
    last_status: str
    http_status: int | str  # '' when there was no response
    attempts: int
    duration_ms: int
    results_maxlen: int
    delete_acked: bool
    stamp: str
    cost: int
    answered_ago_ms: int
    limits: str
    prefix: str
    key_limits: str
    key: str


@dataclass(frozen=True, slots=True)
class ReclaimArgs:
    group: str
    me: str
    min_idle_ms: int
    ids: Sequence[str]


@dataclass(frozen=True, slots=True)
class RetireArgs:
    group: str
    names: Sequence[str]


@dataclass(frozen=True, slots=True)
class UnkeyKeys:
    index: str


@dataclass(frozen=True, slots=True)
class UnkeyArgs:
    prefix: str
    most: int


TAKE = declare("queue/take.lua", TakeKeys, TakeArgs)
KEYED_TAKE = declare("queue/keyed_take.lua", TakeKeys, TakeArgs)
INDEX = declare("queue/index.lua", IndexKeys, IndexArgs)
RETRY = declare("queue/retry.lua", RetryKeys, RetryArgs)
BURY = declare("queue/bury.lua", BuryKeys, BuryArgs)
RECLAIM = declare("queue/reclaim.lua", StreamKey, ReclaimArgs)
RETIRE = declare("queue/retire.lua", StreamKey, RetireArgs)
UNKEY = declare("queue/unkey.lua", UnkeyKeys, UnkeyArgs)
