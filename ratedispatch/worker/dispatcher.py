"""The worker: a reader, a dispatch loop and a reclaimer in one task group; calls in another.

Stopping cancels the first group (nothing new is read, taken or reclaimed) and gives the calls
group a deadline of SHUTDOWN_GRACE_SECONDS; whatever is not settled by then stays pending.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping, Sequence

import anyio
import anyio.lowlevel
import httpx
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import SecretStr
from redis.asyncio import Redis

from ..apis import DEFAULT, Api, default_api
from ..guard import RedisGuard
from ..keys import Keys
from ..limits.limiter import Limiter
from ..queue.consumers import Consumers
from ..queue.entries import Grant, TakeStatus
from ..queue.queue import Queue
from ..settings import Settings, mask_url
from .acks import Acker
from .calls import Caller
from .capacity import Capacity, Hold
from .lanes import Lane
from .metrics import Metrics
from .reader import IDLE_POLL_SECONDS, READ_BATCH, SHIELD_SECONDS, Reader

log = logging.getLogger("ratedispatch.worker")

READ_BLOCK_MS = 1000
# Consumers that hold nothing and were idle this long are stopped workers: their records go.
CONSUMER_PRUNE_MS = 3_600_000
# /healthz fails when Redis has not answered this worker for this long.
HEALTH_REDIS_SECONDS = 30.0


class Dispatcher:
    """One worker process's dispatcher: one consumer of the group."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        http: httpx.AsyncClient,
        *,
        apis: Mapping[str, Api] | None = None,
        rng: random.Random | None = None,
        read_block_ms: int = READ_BLOCK_MS,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`apis`: the APIs from RATEDISPATCH_CONFIG (ratedispatch/apis.py: load_apis); None:
        the default API alone, as the environment sets it, and entries name no API.
        `transport`: the one `http` sends with, to send requests on it directly.
        `read_block_ms` 0: poll instead of XREADGROUP BLOCK (the embedded fakeredis does not
        wake blocked reads)."""
        self._settings = settings
        self.metrics = metrics or Metrics()
        self.running = False
        self.guard = RedisGuard(
            settings.redis_url,
            on_nogroup=self._recreate_group,
            # Only idle connections: closing one another task is using breaks redis-py mid-call.
            reset=lambda: redis.connection_pool.disconnect(inuse_connections=False),
        )
        self.capacity = Capacity(settings.concurrency)
        routed = apis is not None
        names = frozenset(apis) if apis is not None else None
        rng = rng or random.Random()
        self.lanes: dict[str, Lane] = {}  # each API's first lane: the one the reader feeds
        self.all_lanes: list[Lane] = []  # every lane: one per API, or per credential of a pool
        for api in (apis or {DEFAULT: default_api(settings)}).values():
            keys = Keys.from_settings(api.settings, api.name)
            if api.pool:
                lanes = [
                    self._lane(
                        redis, http, api, token_keys,
                        api.settings.model_copy(update={"api_token": SecretStr(token)}),
                        rng, transport, names, credential=variable,
                    )
                    for token_keys, (variable, token) in zip(
                        api.pool_keys(keys), api.pool, strict=True
                    )
                ]  # fmt: skip
            else:
                lanes = [self._lane(redis, http, api, keys, api.settings, rng, transport, names)]
            for lane in lanes:
                lane.siblings = lanes
            self.lanes[api.name] = lanes[0]
            self.all_lanes += lanes
        default = self.lanes[DEFAULT]
        self.keys, self.limiter, self.queue = default.keys, default.limiter, default.queue
        self.consumers = Consumers(redis, self.keys, settings.consumer, self.guard)
        self._intake = anyio.CancelScope()
        self.reader = Reader(
            settings,
            self.lanes,
            self.capacity,
            start_calls=self._start_calls,
            bury_invalid=self._bury_invalid,
            read_block_ms=read_block_ms,
            routed=routed,
        )
        self._calls: TaskGroup | None = None
        # Grants go to long-lived caller tasks (one per call in flight, at most CONCURRENCY):
        # a task per call cost about 8 us of a worker's 0.24 ms of CPU per task (measured).
        self._grants: tuple[
            MemoryObjectSendStream[tuple[Lane, Grant]],
            MemoryObjectReceiveStream[tuple[Lane, Grant]],
        ]
        self._callers = 0
        self.in_flight = 0

    def _lane(
        self,
        redis: Redis,
        http: httpx.AsyncClient,
        api: Api,
        keys: Keys,
        settings: Settings,
        rng: random.Random,
        transport: httpx.AsyncBaseTransport | None,
        names: frozenset[str] | None,
        credential: str = "",
    ) -> Lane:
        """A lane of `api`: with its own limits at `keys` and its token in `settings` (for a
        pool's `credential`, that credential's)."""
        # The worker's own name, whatever the API's settings were made from.
        settings = settings.model_copy(update={"consumer": self._settings.consumer})
        limiter = Limiter.from_settings(redis, keys, settings)
        queue = Queue.from_settings(redis, settings, limiter, self.guard, api.name, keys=keys)
        acker = Acker(queue, self.capacity)
        caller = Caller(
            settings, http, queue, limiter, self.guard, self.metrics, rng, acker, transport,
            names, api.name, api.key_tokens, credential,
        )  # fmt: skip
        return Lane(api, keys, limiter, queue, acker, caller, credential=credential)

    def stop(self) -> None:
        """Take nothing new; in-flight calls get SHUTDOWN_GRACE_SECONDS to finish."""
        self._intake.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as calls:
            self._calls = calls
            self._grants = anyio.create_memory_object_stream[tuple[Lane, Grant]](math.inf)
            self._callers = 0
            # One scope for start-up and the loops: a stop while Redis is still unreachable at
            # start-up ends the worker just as well.
            with self._intake:
                await self.guard.run(self.queue.ensure_group, "creating the consumer group")
                for lane in self.lanes.values():
                    await lane.queue.prepare_keys()
                log.info(
                    "worker %s started on %s (group %s), concurrency %d",
                    self.queue.consumer,
                    self.keys.stream,
                    self.keys.group,
                    self._settings.concurrency,
                )
                for lane in self.lanes.values():
                    limiter = lane.limiter
                    log.info(
                        "API %s: %s, limits %s%s%s",
                        lane.name,
                        mask_url(lane.caller.base_url),
                        limiter.limits,
                        f", at most {limiter.max_in_flight} in flight across the fleet"
                        if limiter.max_in_flight
                        else "",
                        f", for each of {len(lane.siblings)} credentials (tokens_env)"
                        if lane.credential
                        else "",
                    )
                task_status.started()
                self.running = True
                try:
                    async with anyio.create_task_group() as loops:
                        loops.start_soon(self.reader.run)
                        for lane in self.all_lanes:
                            loops.start_soon(self._dispatch_loop, lane)
                        loops.start_soon(self._reclaim_loop)
                finally:
                    self.running = False
            self._grants[0].close()  # the callers end once every grant sent is called
            calls.cancel_scope.deadline = anyio.current_time() + (
                self._settings.shutdown_grace_seconds
            )
            if self.in_flight:
                log.info(
                    "stopping: waiting up to %gs for %d calls in flight",
                    self._settings.shutdown_grace_seconds,
                    self.in_flight,
                )
        with anyio.move_on_after(SHIELD_SECONDS, shield=True):
            # Leave no record behind in XINFO CONSUMERS (unless we still hold entries).
            await self.consumers.retire([self.queue.consumer])
        log.info("worker %s stopped", self.queue.consumer)

    def health(self) -> tuple[bool, str]:
        """For /healthz: the loops run, Redis does not refuse commands, and it answered within
        HEALTH_REDIS_SECONDS."""
        if self.guard.refused and self.guard.trouble:
            return False, f"{self.guard.trouble} for {self.guard.down_for():.0f}s"
        if not self.running:
            return False, "the worker loops are not running"
        silent = time.monotonic() - self.guard.last_ok
        if silent > HEALTH_REDIS_SECONDS:
            return False, f"Redis has not answered for {silent:.0f}s"
        return True, "ok"

    async def _recreate_group(self) -> None:
        await self.queue.ensure_group()

    async def _bury_invalid(self, entry_id: str, reason: str) -> bool:
        return await self.lanes[DEFAULT].caller.bury(
            entry_id, reason, "invalid", last_status="invalid", attempts=0
        )

    # -- dispatching: an API's index -> calls ---------------------------------------------

    async def _dispatch_loop(self, lane: Lane) -> None:
        """Takes for one API: asleep while its limits are full, without delaying another's."""
        acker, queue = lane.acker, lane.queue
        await self.reader.started.wait()
        while True:
            if lane.fast and time.monotonic() - lane.last_take < IDLE_POLL_SECONDS:
                # The reader is busy on the fast path, and each of its takes looks at the index
                # and the retries too: a take here would only compete with it for slots.
                with anyio.move_on_after(IDLE_POLL_SECONDS):
                    await lane.wake.wait()
                lane.wake = anyio.Event()
                continue
            # Capacity, free or about to be: a success waiting to be recorded is recorded by
            # this take, and its call's capacity goes to the calls the take starts.
            await self.capacity.wait_free(lambda: acker.waiting, lane.name)
            with acker.taking():
                await acker.gather()
                claim = acker.claim()
            if self.capacity.hungry_besides(lane.name):
                # Another API waits for capacity: the successes' goes back once recorded, and
                # this API starts no call until that one has had its turn.
                reserved, want = claim.units, 0
                if not claim.successes:
                    await anyio.lowlevel.checkpoint()  # let it run: what is free is its
                    continue
            else:
                reserved = want = claim.units + self.capacity.reserve(self._settings.concurrency)
            if not reserved and not claim.successes:
                continue  # the reader took both first
            take = None
            try:
                with anyio.move_on_after(SHIELD_SECONDS, shield=True):
                    take = await queue.take(want, successes=claim.successes)
            finally:
                if take is None:
                    # Cut short after SHIELD_SECONDS (Redis stalled, away or refusing, or a
                    # stop): a take that did happen is not known here; its entries stay pending
                    # under our name and are reclaimed or read again by the next process of the
                    # same name. The successes hold their calls' capacity again.
                    claim.failed()
                    self._start_calls(lane, [], reserved - claim.units)
            if take is None:
                continue
            claim.recorded(take.recorded)
            self._start_calls(lane, take.grants, reserved)
            if take.status is TakeStatus.GRANTED:
                continue
            if take.status is TakeStatus.FULL:
                self.metrics.slots_refused.inc()
                # Sleep until the best task may fit (a window's PTTL, a paced term's next
                # emission), not a fixed poll.
                await anyio.sleep(max(take.wait or 0.0, 0.001))
            else:
                if take.wait is None:
                    lane.fast = True  # nothing in the index, no backoff pending
                timeout = IDLE_POLL_SECONDS
                if take.wait is not None:
                    timeout = min(timeout, take.wait)
                with anyio.move_on_after(timeout):
                    await lane.wake.wait()
                lane.wake = anyio.Event()

    def _start_calls(self, lane: Lane, grants: Sequence[Grant], reserved: int) -> None:
        """Start a call for each grant, on `reserved` capacity; the unused capacity goes back."""
        assert self._calls is not None
        if grants:
            self.metrics.slots_granted.inc(len(grants))
        for grant in grants:
            self.in_flight += 1
            self._grants[0].send_nowait((lane, grant))
        while self._callers < self.in_flight:  # else an idle caller takes the grant
            self._callers += 1
            self._calls.start_soon(self._call_loop)
        self.capacity.release(reserved - len(grants))

    async def _call_loop(self) -> None:
        async for lane, grant in self._grants[1]:
            await self._call(lane, grant)

    async def _call(self, lane: Lane, grant: Grant) -> None:
        self.metrics.in_flight.inc()
        # Capacity is held until the outcome is recorded, not only while the API answers: so a
        # worker never holds more than CONCURRENCY entries it has called and not yet recorded,
        # which bounds the calls repeated if it dies or its Redis connection hangs.
        hold = Hold(self.capacity)
        try:
            await lane.caller.call(grant, hold)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            hold.release()

    # -- reclaiming: a dead worker's entries -> priority index ----------------------------

    async def _reclaim_loop(self) -> None:
        min_idle_ms = round(self._settings.reclaim_idle_seconds * 1000)
        interval = min(max(self._settings.reclaim_idle_seconds / 4, 0.1), 15.0)
        while True:
            if self.guard.recovered_within(self._settings.reclaim_idle_seconds):
                # Right after an outage every live worker's in-flight entry looks abandoned:
                # give them RECLAIM_IDLE_SECONDS of Redis being back to record their outcomes
                # (`reclaim` checks again, for an outage that starts during this pass).
                await anyio.sleep(interval)
                continue
            await self.consumers.retire(await self.consumers.idle(CONSUMER_PRUNE_MS))
            for lane in self.lanes.values():
                await lane.queue.move_keyed_leftovers()
            ids = await self.consumers.stale_ids(min_idle_ms, READ_BATCH)
            if ids:
                entries, dropped = await self.consumers.reclaim(ids, min_idle_ms)
                if entries:
                    self.metrics.reclaimed.inc(len(entries))
                    log.warning(
                        "reclaimed %d tasks from workers idle over %gs",
                        len(entries),
                        self._settings.reclaim_idle_seconds,
                    )
                    await self.reader.index_held(entries, reread=False)
                if dropped:
                    log.warning(
                        "%d pending tasks no longer exist in the stream (trimmed or deleted); "
                        "acknowledged and forgotten",
                        dropped,
                    )
                if len(ids) >= READ_BATCH:
                    continue
            await anyio.sleep(interval)
