"""Every stream, pending-list and index command of one consumer: read, index, take, settle.

Ownership is the pending list (PEL) of the group. An entry is held by exactly one of:
the stream (not yet delivered); a worker's consumer (just read, or in its call); the
waiting consumer, mirrored by the priority index or the retry index; or nobody (acknowledged,
dead-lettered). Every move between them is one script.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from redis import exceptions as rexc
from redis.asyncio import Redis

from ..errors import ConfigError
from ..guard import RedisGuard
from ..keys import Keys
from ..limits.limiter import Limiter
from ..settings import Settings
from ..task import Priority, Task
from . import inputs as i
from .entries import (
    Entry,
    Success,
    Take,
    ago_ms,
    as_text,
    id_key,
    index_member,
    member_cost,
    member_key,
)

log = logging.getLogger("ratedispatch.worker")

# Retries moved back into the priority index by one take, at most: bounds the script's work.
PROMOTE_PER_TAKE = 1000
# The most pending entries of one consumer a script lists to check what it holds. The reply is
# what the consumer really holds in an id range (calls in flight, a read batch), far below this.
PENDING_BOUND = 100_000
# Entries acknowledged by one script call, at most (Lua's unpack stops near 8000 values).
ACK_BATCH = 500


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
        key_weights: Mapping[str, float] | None = None,
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
        # Results off: the scripts are given the task stream, and write no result to it.
        self._results = keys.results or keys.stream
        self._take = (i.KEYED_TAKE if keys.keyed else i.TAKE).on(redis)
        self._key_weights = dict(key_weights or {})
        self._index = i.INDEX.on(redis)
        self._retry = i.RETRY.on(redis)
        self._bury = i.BURY.on(redis)
        self._unkey = i.UNKEY.on(redis)

    @classmethod
    def from_settings(
        cls,
        redis: Redis,
        settings: Settings,
        limiter: Limiter,
        guard: RedisGuard,
        api: str = "default",
        *,
        keys: Keys | None = None,
    ) -> Queue:
        """The queue of API `api`, whose settings are `settings` (ratedispatch/apis.py); `keys`:
        its keys, when they are not the API's own (a pool's credential: Api.pool_keys)."""
        return cls(
            redis,
            keys or Keys.from_settings(settings, api),
            settings.consumer,
            limiter,
            guard,
            results_maxlen=settings.results_maxlen,
            delete_acked=settings.delete_acked,
            key_weights=settings.key_weights,
        )

    def _member(self, entry_id: str, task: Task) -> str:
        key = (task.key or "") if self.keys.keyed else None
        return index_member(entry_id, task.priority, task.cost, key)

    async def prepare_keys(self) -> None:
        """At start-up. With a key_field: put key_weights where the take reads them
        (queue/keyed.lua: P weights), in place of what is there (every worker of a fleet has the
        same config). Without: move tasks still waiting by key into the priority index."""
        if self.keys.keyed is None:
            await self.move_keyed_leftovers()
            return
        name = self.keys.keyed_name("weights")

        async def publish() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(name)
                if self._key_weights:
                    flat = [x for kv in self._key_weights.items() for x in (kv[0], str(kv[1]))]
                    pipe.hset(name, items=flat)
                return await pipe.execute()

        await self._guard.run(publish, "publishing key_weights")

    async def move_keyed_leftovers(self) -> None:
        """An API without a key_field: move the tasks that still wait by key (it had one until
        now, or a worker with the old config still indexes by key) into the priority index,
        where its takes look. At start-up, and now and then (queue/unkey.lua)."""
        if self.keys.keyed is not None:
            return
        prefix = self.keys.keyed_home
        keyed = [f"{prefix}ready:{int(rank)}" for rank in Priority] + [f"{prefix}sleeping"]

        async def unkey() -> Any:
            try:
                if not await self._redis.exists(*keyed):
                    return 0
            except rexc.NoPermissionError:
                # An ACL without the keys' pattern (docs/operations.md): the API never had any.
                return 0
            return await self._unkey(i.UnkeyKeys(self.keys.index), i.UnkeyArgs(prefix, 1000))

        while moved := int(await self._guard.run(unkey, "moving tasks that waited by key")):
            log.warning(
                "moved the tasks of %d keys into the priority index: the API has no key_field",
                moved,
            )

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

    async def index_held(self, items: Iterable[tuple[str, Task]], *, reread: bool) -> int:
        """Index entries this consumer holds and did not just read: reclaimed, or left by a
        previous process of the same name and read again (`reread`). Returns how many were
        indexed (those no longer ours stay where they are)."""
        members = [self._member(entry_id, task) for entry_id, task in items]
        if not members:
            return 0
        keys = i.IndexKeys(self.keys.stream, self.keys.index)
        args = i.IndexArgs(
            self.keys.group,
            self.consumer,
            self.keys.waiting_consumer,
            PENDING_BOUND,
            reread,
            self.keys.keyed or "",
            members,
        )

        async def op() -> Any:
            return await self._index(keys, args)

        return int(await self._guard.run(op, "indexing tasks"))

    async def index(self, fresh: Sequence[tuple[Entry, Task]]) -> None:
        """Index entries this consumer just read, taking no slot: kept back by a reader that
        is stopping or holding back (the take indexes them, and grants nothing)."""
        await self.take(0, fresh)

    async def index_size(self) -> int:
        """How many tasks wait in the priority index (or by key) for a slot."""
        keyed = self.keys.keyed_name("waiting") if self.keys.keyed is not None else None

        async def op() -> Any:
            if keyed is None:
                return await self._redis.zcard(self.keys.index)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zcard(self.keys.index)
                pipe.hvals(keyed)
                indexed, by_rank = await pipe.execute()
            return int(indexed) + sum(max(0, int(n)) for n in by_rank)

        return int(await self._guard.run(op, "counting indexed tasks"))

    async def take(
        self,
        want: int,
        fresh: Sequence[tuple[Entry, Task]] = (),
        *,
        drained: bool = False,
        keep: bool = False,
        successes: Sequence[Success] = (),
    ) -> Take:
        """Record `successes` (calls that succeeded: acknowledged, each with a result, in
        Take.recorded), then take up to `want` slots for the best tasks (see queue/take.lua).
        `fresh` are entries this consumer just read (`drained`: that read emptied the stream):
        called at once when nothing waits or competes with them, else indexed; or, with `keep`
        and more unread, left with the caller (READ_ON) to bring back with what it reads next.
        At most ACK_BATCH successes at once."""
        members = sorted(  # best first: rank, then entry id
            (self._member(entry.id, task), entry, task) for entry, task in fresh
        )
        ids = sorted((s.entry_id for s in successes), key=id_key)
        keys = i.TakeKeys(
            self.keys.rate,
            self.keys.index,
            self.keys.retry,
            self.keys.stream,
            self.keys.flight,
            self.keys.terms,
            self._results,
        )
        limiter = self._limiter
        asked = 0.0

        async def op() -> Any:
            nonlocal asked
            asked = time.monotonic()  # each call's deadline counts from before its take
            # Each call counts in the terms from its answer, not from this script: the batch's
            # wait and round trip are not added to it. Measured anew for each attempt.
            answers: list[i.SuccessArgs] = [
                (
                    *(s.entry_id, s.http_status, s.duration_ms),
                    s.attempts,
                    s.stamp,
                    s.cost,
                    ago_ms(s.answered_at, asked),
                    s.key,
                )
                for s in successes
            ]
            args = i.TakeArgs(
                limits=limiter.spec,
                max_in_flight=limiter.max_in_flight,
                max_cost=limiter.max_cost,
                want=want,
                group=self.keys.group,
                me=self.consumer,
                waiting=self.keys.waiting_consumer,
                promote_max=PROMOTE_PER_TAKE,
                pending_bound=PENDING_BOUND,
                drained=drained,
                keep=keep,
                deadline_ms=limiter.deadline_ms,
                results_maxlen=self._results_maxlen,
                delete_acked=self._delete_acked,
                lowest=ids[0] if ids else "",
                highest=ids[-1] if ids else "",
                succeeded=len(answers),
                prefix=self.keys.keyed or "",
                key_limits=limiter.key_spec,
                key_max_cost=limiter.key_max_cost,
                weighted=bool(self._key_weights),
                successes_then_fresh=[*answers, *(member for member, _, _ in members)],
            )
            return await self._take(keys, args)

        what = "recording tasks as done" if successes and not want else "taking a slot"
        return Take.decode(await self._guard.run(op, what), members, asked)

    async def ack_many(self, successes: Sequence[Success]) -> list[bool]:
        """Acknowledge (and delete) entries whose calls succeeded, each with a result; False
        for an entry that was no longer ours. At most ACK_BATCH at once."""
        return (await self.take(0, successes=successes)).recorded

    async def retry_later(
        self, entry_id: str, member: str, delay: float, *, stamp: str, answered: float | None
    ) -> bool:
        """Back to waiting until `delay` seconds (Redis time) have passed. The call started by
        the take at `stamp` was answered at `answered` (time.monotonic(); None: none was made)."""
        keys = i.RetryKeys(self.keys.stream, self.keys.retry, self.keys.flight, self.keys.terms)

        async def op() -> Any:
            args = i.RetryArgs(
                self.keys.group,
                self.consumer,
                self.keys.waiting_consumer,
                entry_id,
                member,
                round(delay * 1000),
                stamp,
                member_cost(member),
                -1 if answered is None else ago_ms(answered, time.monotonic()),
                self._limiter.spec,
                self.keys.keyed or "",
                self._limiter.key_spec,
                member_key(member) or "",
            )
            return await self._retry(keys, args)

        return bool(await self._guard.run(op, "recording a task for a retry"))

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
        cost: int = 1,
        key: str = "",
        answered: float | None = None,
    ) -> bool:
        """Dead-letter with the reason (keeping every original field), and record a result.
        `stamp`: of the take that started its call, of `cost`, for `key`, which was `answered`
        at that time.monotonic() (None: no call was made after all)."""
        keys = i.BuryKeys(
            self.keys.stream, self._results, self.keys.dead, self.keys.flight, self.keys.terms
        )

        async def op() -> Any:
            args = i.BuryArgs(
                self.keys.group,
                self.consumer,
                entry_id,
                reason,
                last_status,
                "" if http_status is None else http_status,
                attempts,
                duration_ms,
                self._results_maxlen,
                self._delete_acked,
                stamp,
                cost,
                -1 if answered is None else ago_ms(answered, time.monotonic()),
                self._limiter.spec,
                self.keys.keyed or "",
                self._limiter.key_spec,
                key,
            )
            return await self._bury(keys, args)

        recorded = bool(await self._guard.run(op, "recording a task as dead"))
        if recorded:
            log.warning("task %s dead-lettered: %s", entry_id, reason)
        return recorded
