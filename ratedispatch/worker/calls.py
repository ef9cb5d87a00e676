"""One call: build the request, make it under a total deadline, and record what it meant."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import anyio
import httpx

from ..errors import InvalidTask
from ..guard import RedisGuard
from ..limits.window import Limiter
from ..queue.entries import Grant, Success
from ..queue.queue import Queue
from ..settings import Settings
from ..task import build_request, parse_entry
from .acks import Acker
from .metrics import Metrics
from .outcome import Outcome, Verdict, classify_exception, classify_response, retry_delay

log = logging.getLogger("ratedispatch.worker")

# A response body is read up to this much, then dropped: only the status matters.
MAX_RESPONSE_BYTES = 65_536


class Caller:
    """Makes the call for a granted entry and acknowledges, retries or dead-letters it."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        queue: Queue,
        limiter: Limiter,
        guard: RedisGuard,
        metrics: Metrics,
        rng: random.Random,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._base_url = settings.require_api()
        self._token = settings.api_token.get_secret_value() if settings.api_token else None
        self._http = http
        # Requests go straight to the client's transport when it is known: the client's own
        # send adds redirect, auth and cookie handling (a tenth of a worker's CPU, profiled)
        # that a call does not want. Redirects are not followed either way, and no cookie an
        # API sets is kept and sent with another task's call.
        self._transport = transport
        self._queue = queue
        self._acker = Acker(queue)
        self._limiter = limiter
        self._guard = guard
        self._metrics = metrics
        self._rng = rng

    async def call(self, grant: Grant) -> None:
        """One attempt for a granted entry, recorded in Redis before returning."""
        entry = grant.entry
        try:
            task = grant.task or parse_entry(
                entry.id, entry.fields, max_body_bytes=self._settings.max_body_bytes
            )
            request = build_request(
                task,
                self._base_url,
                token=self._token,
                timeout=self._settings.http_timeout_seconds,
            )
        except InvalidTask as exc:
            await self.bury(
                entry.id,
                exc.reason,
                "invalid",
                last_status="invalid",
                attempts=grant.attempt - 1,
                stamp=grant.stamp,  # no call: the slot frees
            )
            return
        if grant.attempt > self._settings.max_attempts:
            # Counted attempts include calls cut short by a crash: the limit still holds.
            await self.bury(
                entry.id,
                f"gave up after {grant.attempt - 1} attempts "
                f"(RATEDISPATCH_MAX_ATTEMPTS={self._settings.max_attempts}); "
                "the last one was interrupted by a worker stopping",
                "interrupted",
                last_status="interrupted",
                attempts=grant.attempt - 1,
                stamp=grant.stamp,  # no call: the slot frees
            )
            return
        if grant.attempt == 1:
            # The entry id is the producer's XADD time (Redis's clock), this is the worker's.
            enqueued_ms = int(entry.id.partition("-")[0])
            self._metrics.queue_wait.observe(max(0.0, time.time() - enqueued_ms / 1000))
        started = time.monotonic()
        outcome = await self._send(request)
        answered = time.monotonic()
        self._metrics.call(outcome.verdict.value, outcome.http_status, answered - started)
        await self._settle(grant, outcome, round((answered - started) * 1000), answered)

    async def _send(self, request: httpx.Request) -> Outcome:
        try:
            # A total deadline, not httpx's per-read one: a call must end well before
            # RECLAIM_IDLE_SECONDS, or another worker could take its entry and call again.
            with anyio.fail_after(self._settings.http_timeout_seconds):
                if self._transport is not None:
                    response = await self._transport.handle_async_request(request)
                else:
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

    async def _settle(
        self, grant: Grant, outcome: Outcome, duration_ms: int, answered: float
    ) -> None:
        entry_id = grant.entry.id
        if outcome.verdict is Verdict.OK:
            status = outcome.http_status or 0
            success = Success(entry_id, status, duration_ms, grant.attempt, grant.stamp, answered)
            recorded = await self._acker.ack(success)
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
            recorded = await self._queue.retry_later(
                entry_id, grant.member, delay, stamp=grant.stamp, answered=answered
            )
            self._metrics.retries.inc()
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
            recorded = await self.bury(
                entry_id,
                reason,
                kind,
                last_status=outcome.last_status,
                http_status=outcome.http_status,
                duration_ms=duration_ms,
                attempts=grant.attempt,
                stamp=grant.stamp,
                answered=answered,
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
        closed = await self._guard.run(
            lambda: self._limiter.close_for(seconds), "closing the window after a 429"
        )
        log.warning("the API answered 429: window closed for every worker for %.1fs", closed)

    async def bury(
        self, entry_id: str, reason: str, kind: str, *, last_status: str, **details: Any
    ) -> bool:
        """Dead-letter, counted by `kind`: invalid, rejected (4xx), exhausted, interrupted."""
        recorded = await self._queue.bury(entry_id, reason, last_status=last_status, **details)
        if recorded:
            self._metrics.dead_letters.labels(kind).inc()
        return recorded
