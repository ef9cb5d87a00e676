"""The worker: a reader, a dispatch loop and a reclaimer in one task group; calls in another.

Stopping cancels the first group (nothing new is read, taken or reclaimed) and gives the calls
group a deadline of SHUTDOWN_GRACE_SECONDS; whatever is not settled by then stays pending.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence

import anyio
import httpx
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from redis.asyncio import Redis

from ..connection import RedisGuard
from ..errors import InvalidTask
from ..keys import Keys
from ..limits.window import Limiter
from ..queue.consumers import Consumers
from ..queue.queue import Entry, Grant, Queue, TakeStatus
from ..settings import Settings
from ..task import Task, parse_entry
from ..worker.calls import Caller
from ..worker.metrics import Metrics

log = logging.getLogger("ratedispatch.worker")

READ_BATCH = 500
READ_BLOCK_MS = 1000
# How often an idle dispatch loop looks for work other workers' readers indexed.
IDLE_POLL_SECONDS = 0.25
# Redis work that must not be cut in half by a stop (a take whose grants would be orphaned).
SHIELD_SECONDS = 5.0
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
        rng: random.Random | None = None,
        read_block_ms: int = READ_BLOCK_MS,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`transport`: the one `http` sends with, to send requests on it directly."""
        self._settings = settings
        # 0: poll instead of XREADGROUP BLOCK (the embedded fakeredis does not wake blocked reads)
        self._read_block_ms = read_block_ms
        self.metrics = metrics or Metrics()
        self.running = False
        self.keys = Keys.from_settings(settings)
        self.limiter = Limiter.from_settings(redis, self.keys, settings)
        self.guard = RedisGuard(
            settings.redis_url,
            on_nogroup=self._recreate_group,
            # Only idle connections: closing one another task is using breaks redis-py mid-call.
            reset=lambda: redis.connection_pool.disconnect(inuse_connections=False),
        )
        self.queue = Queue(
            redis,
            self.keys,
            settings.consumer,
            self.limiter,
            self.guard,
            results_maxlen=settings.results_maxlen,
            delete_acked=settings.delete_acked,
        )
        self.consumers = Consumers(redis, self.keys, settings.consumer, self.guard)
        self._caller = Caller(
            settings,
            http,
            self.queue,
            self.limiter,
            self.guard,
            self.metrics,
            rng or random.Random(),
            transport,
        )
        self._slots = anyio.Semaphore(settings.concurrency)
        self._intake = anyio.CancelScope()
        self._wake = anyio.Event()
        self._freed = anyio.Event()
        # True while the last look found nothing waiting in the index or for a backoff. False
        # until the first look: a worker that starts on a backlog reads it in whole batches, so
        # workers starting together do not split it in small reads and give slots to the best
        # of their own share only.
        self._fast = False
        self._last_admit = float("-inf")
        # Entries read and kept back (READ_ON): they come back with the reader's next read.
        self._carry: list[tuple[Entry, Task]] = []
        self._calls: TaskGroup | None = None
        # Grants go to long-lived caller tasks (one per call in flight, at most CONCURRENCY):
        # a task per call cost about 8 us of a worker's 0.24 ms of CPU per task (measured).
        self._grants: tuple[MemoryObjectSendStream[Grant], MemoryObjectReceiveStream[Grant]]
        self._callers = 0
        self.in_flight = 0

    def stop(self) -> None:
        """Take nothing new; in-flight calls get SHUTDOWN_GRACE_SECONDS to finish."""
        self._intake.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as calls:
            self._calls = calls
            self._grants = anyio.create_memory_object_stream[Grant](math.inf)
            self._callers = 0
            # One scope for start-up and the loops: a stop while Redis is still unreachable at
            # start-up ends the worker just as well.
            with self._intake:
                await self.guard.run(self.queue.ensure_group, "creating the consumer group")
                log.info(
                    "worker %s started on %s (group %s), limit %d per %gs, concurrency %d",
                    self.queue.consumer,
                    self.keys.stream,
                    self.keys.group,
                    self._settings.rate_limit,
                    self._settings.rate_window_seconds,
                    self._settings.concurrency,
                )
                task_status.started()
                self.running = True
                try:
                    async with anyio.create_task_group() as loops:
                        loops.start_soon(self._read_loop)
                        loops.start_soon(self._dispatch_loop)
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
        """For /healthz: the loops run, and Redis answered within HEALTH_REDIS_SECONDS."""
        if not self.running:
            return False, "the worker loops are not running"
        silent = time.monotonic() - self.guard.last_ok
        if silent > HEALTH_REDIS_SECONDS:
            return False, f"Redis has not answered for {silent:.0f}s"
        return True, "ok"

    async def _recreate_group(self) -> None:
        await self.queue.ensure_group()

    # -- reading: stream -> calls, or the priority index ----------------------------------

    async def _read_loop(self) -> None:
        try:
            await self._read()
        finally:
            await self._index_carry()  # stopping: what we kept back is for any worker

    async def _index_carry(self) -> None:
        """Entries kept back (READ_ON) go into the priority index without waiting for more."""
        if self._carry:
            with anyio.move_on_after(SHIELD_SECONDS, shield=True):
                await self.queue.take(0, self._carry)
                self._carry = []

    async def _read(self) -> None:
        after = "0"
        while True:  # first, entries a previous process with our consumer name left behind
            entries = await self.queue.read_own_pending(READ_BATCH, after)
            if not entries:
                break
            after = entries[-1].id
            await self._shielded_ingest(entries, reread=True)
        while True:
            if self._fast and not self._carry:
                # Nothing waits in the index: read only what can be called now, so the entries
                # go straight to their calls (anything read beyond would be indexed first).
                while not self._slots.value:
                    await self._freed.wait()
                    self._freed = anyio.Event()
                count = self._slots.value
            else:
                waiting = await self.queue.waiting()
                room = self._settings.max_waiting - waiting - len(self._carry)
                if room <= 0:
                    # Back-pressure: the backlog stays in the stream until the index drains.
                    await self._index_carry()
                    await anyio.sleep(IDLE_POLL_SECONDS)
                    continue
                count = min(READ_BATCH, room)
            # Carrying entries, read on at once: they wait for this read.
            block_ms = 0 if self._carry else self._read_block_ms
            entries = await self.queue.read_new(count, block_ms)
            if entries or self._carry:
                with anyio.move_on_after(SHIELD_SECONDS, shield=True):
                    # Entries just read are pending under our name: finish with them even when
                    # stopping.
                    await self._admit(entries, drained=len(entries) < count)
            elif not self._read_block_ms:
                await anyio.sleep(IDLE_POLL_SECONDS)

    async def _admit(self, entries: Sequence[Entry], *, drained: bool) -> None:
        """Just-read entries: called at once when nothing waits or competes with them and a
        slot is free (in one script, the fast path), else put in the priority index; or, when
        more is unread, kept back to go in with it (so the index never holds part of a backlog
        that another worker could give a slot from while better tasks are still unread)."""
        fresh = self._carry + await self._parse(entries)
        self._carry = []
        if not fresh:
            return
        want = self._reserve(len(fresh))
        self._last_admit = time.monotonic()
        take = None
        try:
            keep = len(fresh) < READ_BATCH
            take = await self.queue.take(want, fresh, drained=drained, keep=keep)
        finally:
            # Cut short (Redis away past the shield's deadline): the slots go back all the same.
            self._start_calls(take.grants if take else [], want)
        assert take is not None  # else the take raised
        if take.status is TakeStatus.READ_ON:
            self._carry = fresh
            self._fast = False
            return
        self._fast = take.fast and len(take.grants) == len(fresh)
        if not self._fast and drained:
            self._wake.set()  # the index holds what the stream held: the dispatch loop takes

    async def _shielded_ingest(self, entries: Sequence[Entry], *, reread: bool) -> None:
        """Entries reclaimed or left by a previous process: into the priority index."""
        with anyio.move_on_after(SHIELD_SECONDS, shield=True):
            valid = await self._parse(entries)
            if valid:
                await self.queue.defer(((e.id, t.priority) for e, t in valid), reread=reread)
                self._fast = False
                self._wake.set()

    async def _parse(self, entries: Sequence[Entry]) -> list[tuple[Entry, Task]]:
        """The valid entries with their task; the invalid ones are dead-lettered."""
        valid = []
        for entry in entries:
            try:
                task = parse_entry(
                    entry.id, entry.fields, max_body_bytes=self._settings.max_body_bytes
                )
            except InvalidTask as exc:
                await self._caller.bury(
                    entry.id, exc.reason, "invalid", last_status="invalid", attempts=0
                )
                continue
            valid.append((entry, task))
        return valid

    # -- dispatching: index -> calls ------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            if self._fast and time.monotonic() - self._last_admit < IDLE_POLL_SECONDS:
                # The reader is busy on the fast path, and each of its takes looks at the index
                # and the retries too: a take here would only compete with it for slots.
                with anyio.move_on_after(IDLE_POLL_SECONDS):
                    await self._wake.wait()
                self._wake = anyio.Event()
                continue
            await self._slots.acquire()
            want = 1 + self._reserve(self._settings.concurrency)
            take = None
            with anyio.move_on_after(SHIELD_SECONDS, shield=True):
                take = await self.queue.take(want)
            if take is None:  # stopping while Redis is away: nothing was taken that we know of
                self._start_calls([], want)
                continue
            self._start_calls(take.grants, want)
            if take.status is TakeStatus.GRANTED:
                continue
            if take.status is TakeStatus.FULL:
                self.metrics.slots_refused.inc()
                # Sleep exactly until Redis expires the window (its PTTL), not a fixed poll.
                await anyio.sleep(max(take.wait or 0.0, 0.001))
            else:
                if take.wait is None:
                    self._fast = True  # nothing in the index, no backoff pending
                timeout = IDLE_POLL_SECONDS
                if take.wait is not None:
                    timeout = min(timeout, take.wait)
                with anyio.move_on_after(timeout):
                    await self._wake.wait()
                self._wake = anyio.Event()

    def _reserve(self, most: int) -> int:
        """Acquire up to `most` free concurrency slots without waiting; returns how many."""
        n = 0
        while n < most and self._slots.value:
            self._slots.acquire_nowait()
            n += 1
        return n

    def _start_calls(self, grants: Sequence[Grant], reserved: int) -> None:
        """Start a call for each grant, on the `reserved` slots; the unused ones go back."""
        assert self._calls is not None
        if grants:
            self.metrics.slots_granted.inc(len(grants))
        for grant in grants:
            self.in_flight += 1
            self._grants[0].send_nowait(grant)
        while self._callers < self.in_flight:  # else an idle caller takes the grant
            self._callers += 1
            self._calls.start_soon(self._call_loop)
        self._release(reserved - len(grants))

    async def _call_loop(self) -> None:
        async for grant in self._grants[1]:
            await self._call(grant)

    def _release(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()
        if n:
            self._freed.set()

    async def _call(self, grant: Grant) -> None:
        self.metrics.in_flight.inc()
        try:
            await self._caller.call(grant)
        finally:
            # The slot is held until the outcome is recorded, not only while the API answers:
            # so a worker never holds more than CONCURRENCY entries it has called and not yet
            # recorded, which bounds the calls repeated if it dies or its Redis connection hangs.
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            self._release(1)

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
                    await self._shielded_ingest(entries, reread=False)
                if dropped:
                    log.warning(
                        "%d pending tasks no longer exist in the stream (trimmed or deleted); "
                        "acknowledged and forgotten",
                        dropped,
                    )
                if len(ids) >= READ_BATCH:
                    continue
            await anyio.sleep(interval)
