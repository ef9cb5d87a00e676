"""The worker: a reader, a dispatch loop and a reclaimer in one task group; calls in another.

Stopping cancels the first group (nothing new is read, taken or reclaimed) and gives the calls
group a deadline of SHUTDOWN_GRACE_SECONDS; whatever is not settled by then stays pending.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup, TaskStatus
from redis.asyncio import Redis

from .connection import RedisGuard
from .errors import InvalidTask
from .keys import Keys
from .limiter import Limiter
from .metrics import Metrics
from .outcome import (
    Outcome,
    Verdict,
    classify_exception,
    classify_response,
    retry_delay,
)
from .queue import Entry, Grant, Queue, TakeStatus
from .settings import Settings
from .task import build_request, parse_entry

log = logging.getLogger("ratedispatch.worker")

READ_BATCH = 500
READ_BLOCK_MS = 1000
# How often an idle dispatch loop looks for work other workers' readers indexed.
IDLE_POLL_SECONDS = 0.25
# A response body is read up to this much, then dropped: only the status matters.
MAX_RESPONSE_BYTES = 65_536
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
    ) -> None:
        self._settings = settings
        # 0: poll instead of XREADGROUP BLOCK (the embedded fakeredis does not wake blocked reads)
        self._read_block_ms = read_block_ms
        self._base_url = settings.require_api()
        self._token = settings.api_token.get_secret_value() if settings.api_token else None
        self._http = http
        self._rng = rng or random.Random()
        self.metrics = metrics or Metrics()
        self.running = False
        self.keys = Keys.from_settings(settings)
        self.limiter = Limiter(
            redis, self.keys.rate, settings.rate_limit, settings.rate_window_seconds
        )
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
        self._slots = anyio.Semaphore(settings.concurrency)
        self._intake = anyio.CancelScope()
        self._wake = anyio.Event()
        self._waiting = 0
        self._calls: TaskGroup | None = None
        self.in_flight = 0

    def stop(self) -> None:
        """Take nothing new; in-flight calls get SHUTDOWN_GRACE_SECONDS to finish."""
        self._intake.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as calls:
            self._calls = calls
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
            await self.queue.retire([self.queue.consumer])
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

    # -- reading: stream -> priority index ------------------------------------------------

    async def _read_loop(self) -> None:
        after = "0"
        while True:  # first, entries a previous process with our consumer name left behind
            entries = await self.queue.read_own_pending(READ_BATCH, after)
            if not entries:
                break
            after = entries[-1].id
            await self._shielded_ingest(entries)
        while True:
            room = self._settings.max_waiting - self._waiting
            if room <= 0:
                # Back-pressure: the backlog stays in the stream until the index drains.
                await anyio.sleep(IDLE_POLL_SECONDS)
                self._waiting = await self.queue.waiting()
                continue
            entries = await self.queue.read_new(min(READ_BATCH, room), self._read_block_ms)
            if entries:
                await self._shielded_ingest(entries)
            elif not self._read_block_ms:
                await anyio.sleep(IDLE_POLL_SECONDS)

    async def _shielded_ingest(self, entries: Sequence[Entry]) -> None:
        # Entries just read are pending under our name: finish indexing them even when stopping.
        with anyio.move_on_after(SHIELD_SECONDS, shield=True):
            await self._ingest(entries)

    async def _ingest(self, entries: Sequence[Entry]) -> None:
        valid = []
        for entry in entries:
            try:
                task = parse_entry(
                    entry.id, entry.fields, max_body_bytes=self._settings.max_body_bytes
                )
            except InvalidTask as exc:
                await self._bury(entry.id, exc.reason, "invalid", last_status="invalid", attempts=0)
                continue
            valid.append((entry.id, task.priority))
        if valid:
            self._waiting = await self.queue.defer(valid)
            self._wake.set()

    # -- dispatching: index -> calls ------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        assert self._calls is not None
        while True:
            await self._slots.acquire()
            take = None
            with anyio.move_on_after(SHIELD_SECONDS, shield=True):
                take = await self.queue.take(1 + self._slots.value)
            if take is None:  # stopping while Redis is away: nothing was taken that we know of
                self._slots.release()
                continue
            if take.status is TakeStatus.GRANTED:
                self.metrics.slots_granted.inc(len(take.grants))
                for i, grant in enumerate(take.grants):
                    if i:
                        self._slots.acquire_nowait()
                    self.in_flight += 1
                    self._calls.start_soon(self._call, grant)
                continue
            self._slots.release()
            if take.status is TakeStatus.FULL:
                self.metrics.slots_refused.inc()
                # Sleep exactly until Redis expires the window (its PTTL), not a fixed poll.
                await anyio.sleep(max(take.wait or 0.0, 0.001))
            else:
                timeout = IDLE_POLL_SECONDS
                if take.wait is not None:
                    timeout = min(timeout, take.wait)
                with anyio.move_on_after(timeout):
                    await self._wake.wait()
                self._wake = anyio.Event()

    async def _call(self, grant: Grant) -> None:
        self.metrics.in_flight.inc()
        try:
            await self._attempt(grant)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            self._slots.release()

    async def _attempt(self, grant: Grant) -> None:
        entry = grant.entry
        try:
            task = parse_entry(entry.id, entry.fields, max_body_bytes=self._settings.max_body_bytes)
            request = build_request(task, self._base_url, token=self._token, client=self._http)
        except InvalidTask as exc:
            await self._bury(entry.id, exc.reason, "invalid", last_status="invalid")
            return
        if grant.attempt > self._settings.max_attempts:
            # Counted attempts include calls cut short by a crash: the limit still holds.
            await self._bury(
                entry.id,
                f"gave up after {grant.attempt - 1} attempts "
                f"(RATEDISPATCH_MAX_ATTEMPTS={self._settings.max_attempts}); "
                "the last one was interrupted by a worker stopping",
                "interrupted",
                last_status="interrupted",
            )
            return
        if grant.attempt == 1:
            # The entry id is the producer's XADD time (Redis's clock), this is the worker's.
            enqueued_ms = int(entry.id.partition("-")[0])
            self.metrics.queue_wait.observe(max(0.0, time.time() - enqueued_ms / 1000))
        started = time.monotonic()
        outcome = await self._send(request)
        seconds = time.monotonic() - started
        self.metrics.call(outcome.verdict.value, outcome.http_status, seconds)
        await self._settle(grant, outcome, round(seconds * 1000))

    async def _send(self, request: httpx.Request) -> Outcome:
        try:
            # A total deadline, not httpx's per-read one: a call must end well before
            # RECLAIM_IDLE_SECONDS, or another worker could take its entry and call again.
            with anyio.fail_after(self._settings.http_timeout_seconds):
                response = await self._http.send(request, stream=True)
                try:
                    read = 0
                    async for chunk in response.aiter_bytes():
                        read += len(chunk)
                        if read >= MAX_RESPONSE_BYTES:
                            break
                finally:
                    await response.aclose()
        except Exception as exc:  # every failure of a call is an outcome, never a crash
            return classify_exception(exc)
        return classify_response(response)

    async def _settle(self, grant: Grant, outcome: Outcome, duration_ms: int) -> None:
        entry_id = grant.entry.id
        if outcome.verdict is Verdict.OK:
            recorded = await self.queue.ack(
                entry_id, http_status=outcome.http_status or 0, duration_ms=duration_ms
            )
        elif outcome.verdict is Verdict.RETRY and grant.attempt < self._settings.max_attempts:
            delay = retry_delay(
                outcome,
                grant.attempt,
                self._settings.retry_backoff_seconds,
                self._settings.retry_backoff_max_seconds,
                self._rng,
            )
            if outcome.rate_limited:
                await self._close_window(outcome.retry_after or delay)
            recorded = await self.queue.retry_later(entry_id, grant.member, delay)
            self.metrics.retries.inc()
            log.debug(
                "task %s attempt %d: %s; retry in %.2fs",
                entry_id,
                grant.attempt,
                outcome.reason,
                delay,
            )
        else:
            if outcome.rate_limited:
                await self._close_window(outcome.retry_after or 0.0)
            reason, kind = outcome.reason, "rejected"
            if outcome.verdict is Verdict.RETRY:
                kind = "exhausted"
                reason = (
                    f"gave up after {grant.attempt} attempt{'s' if grant.attempt != 1 else ''} "
                    f"(RATEDISPATCH_MAX_ATTEMPTS={self._settings.max_attempts}): {reason}"
                )
            recorded = await self._bury(
                entry_id,
                reason,
                kind,
                last_status=outcome.last_status,
                http_status=outcome.http_status,
                duration_ms=duration_ms,
            )
        if not recorded:
            # Either our own earlier try was recorded and only its answer was lost (Redis went
            # away), or the entry was reclaimed during a long outage and its new owner records it.
            log.warning(
                "task %s was no longer held by this worker when its outcome (%s) was recorded: "
                "already recorded, or taken over after a long Redis outage",
                entry_id,
                outcome.last_status,
            )

    async def _close_window(self, seconds: float) -> None:
        if seconds <= 0:
            return
        closed = await self.guard.run(
            lambda: self.limiter.close_for(seconds), "closing the window after a 429"
        )
        log.warning("the API answered 429: window closed for every worker for %.1fs", closed)

    async def _bury(
        self, entry_id: str, reason: str, kind: str, *, last_status: str, **details: Any
    ) -> bool:
        """Dead-letter, counted by `kind`: invalid, rejected (4xx), exhausted, interrupted."""
        recorded = await self.queue.bury(entry_id, reason, last_status=last_status, **details)
        if recorded:
            self.metrics.dead_letters.labels(kind).inc()
        return recorded

    # -- reclaiming: a dead worker's entries -> priority index ----------------------------

    async def _reclaim_loop(self) -> None:
        min_idle_ms = round(self._settings.reclaim_idle_seconds * 1000)
        interval = min(max(self._settings.reclaim_idle_seconds / 4, 0.1), 15.0)
        while True:
            if self.guard.recovered_within(self._settings.reclaim_idle_seconds):
                # Redis counts idle time through its own downtime: right after an outage every
                # live worker's in-flight entry looks abandoned. Give them RECLAIM_IDLE_SECONDS
                # of Redis being back to record their outcomes before taking anything over.
                await anyio.sleep(interval)
                continue
            await self.queue.retire(await self.queue.idle_consumers(CONSUMER_PRUNE_MS))
            ids = await self.queue.stale_ids(min_idle_ms, READ_BATCH)
            if ids:
                entries, dropped = await self.queue.reclaim(ids, min_idle_ms)
                if entries:
                    self.metrics.reclaimed.inc(len(entries))
                    log.warning(
                        "reclaimed %d tasks from workers idle over %gs",
                        len(entries),
                        self._settings.reclaim_idle_seconds,
                    )
                    await self._shielded_ingest(entries)
                if dropped:
                    log.warning(
                        "%d pending tasks no longer exist in the stream (trimmed or deleted); "
                        "acknowledged and forgotten",
                        dropped,
                    )
                if len(ids) >= READ_BATCH:
                    continue
            await anyio.sleep(interval)
