"""One call: build the request, make it under a total deadline, and record what it meant."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

import anyio
import httpx

from ..errors import InvalidTask
from ..guard import RedisGuard
from ..limits.limiter import Limiter
from ..queue.entries import Grant, Success
from ..queue.queue import Queue
from ..settings import Settings
from ..task import build_request, parse_entry
from .acks import Acker
from .capacity import Hold
from .heard import Listener, Said, flight_member
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
        acker: Acker,
        transport: httpx.AsyncBaseTransport | None = None,
        apis: frozenset[str] | None = None,
        api: str = "default",
        key_tokens: Mapping[str, str] | None = None,
        credential: str = "",
    ) -> None:
        """`apis`: every API's name when entries name theirs (task.py: parse_entry); `api`:
        the one this caller calls; `key_tokens`: its keys' own tokens (tokens_file);
        `credential`: the pool's credential it calls with (tokens_env), for log lines."""
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
        self._acker = acker
        self._limiter = limiter
        self._guard = guard
        self._metrics = metrics
        self._rng = rng
        self._apis = apis
        self._api = api
        key_field = settings.key_field
        self._key_fields = {api: key_field} if key_field is not None else {}
        self._key_tokens = key_tokens or {}
        self._read_headers = settings.rate_headers != "off"
        self._listener = Listener(limiter, guard, metrics, api, credential)
        self._factor = 1.0  # RATE_ADAPT's, as last said in a log line
        # Where the limit on attempts comes from, as a dead letter's reason names it.
        self._max_attempts = f"RATEDISPATCH_MAX_ATTEMPTS={settings.max_attempts}"
        if api != "default":
            self._max_attempts = f"max_attempts={settings.max_attempts} for API {api!r}"

    @property
    def base_url(self) -> str:
        return self._base_url

    async def call(self, grant: Grant, hold: Hold) -> None:
        """One attempt for a granted entry, recorded in Redis before returning. `hold` is the
        call's capacity: a success hands it to whoever records it, else the caller releases it
        once this returns."""
        entry = grant.entry
        try:
            task = grant.task or parse_entry(
                entry.id,
                entry.fields,
                max_body_bytes=self._settings.max_body_bytes,
                apis=self._apis,
                key_fields=self._key_fields,
            )
            token = self._token
            if self._key_fields:
                # The grant's key (its index member's): the key whose limits the call counts
                # in, and whose limits a 429 to its own token closes.
                token = self._key_tokens.get(grant.key, token)
            request = build_request(
                task,
                self._base_url,
                token=token,
                timeout=self._settings.http_timeout_seconds,
            )
        except InvalidTask as exc:
            await self._bury_uncalled(grant, exc.reason, "invalid")
            return
        if self._apis is not None and task.api != self._api:
            # Indexed for this API by a worker with another RATEDISPATCH_CONFIG (or none): never
            # call one API's task on another's URL, with its token, in its limits.
            reason = (
                f"indexed for API {self._api!r} but names API {task.api!r}: every worker of a "
                "fleet needs the same RATEDISPATCH_CONFIG"
            )
            await self._bury_uncalled(grant, reason, "invalid")
            return
        refusal = self._limiter.refusal(task.cost)
        if refusal is not None:  # indexed by a worker with other LIMITS
            await self._bury_uncalled(grant, refusal, "invalid")
            return
        if grant.attempt > self._settings.max_attempts:
            # Counted attempts include calls cut short by a crash: the limit still holds.
            reason = (
                f"gave up after {grant.attempt - 1} attempts "
                f"({self._max_attempts}); "
                "the last one was interrupted by a worker stopping"
            )
            await self._bury_uncalled(grant, reason, "interrupted")
            return
        # The call must end within HTTP_TIMEOUT_SECONDS of asking for its take: the flight
        # counts it from the take, and drops it (as a dead worker's) after that and a margin.
        budget = grant.asked_at + self._settings.http_timeout_seconds - time.monotonic()
        if budget <= 0:
            log.warning(
                "task %s: its take came back after HTTP_TIMEOUT_SECONDS (the worker stalled); "
                "not called, back to waiting",
                entry.id,
            )
            await self._queue.retry_later(
                entry.id, grant.member, 0, stamp=grant.stamp, answered=None
            )
            return
        if grant.attempt == 1:
            # The entry id is the producer's XADD time (Redis's clock), this is the worker's.
            enqueued_ms = int(entry.id.partition("-")[0])
            self._metrics.queue_wait.observe(max(0.0, time.time() - enqueued_ms / 1000))
        started = time.monotonic()
        outcome = await self._send(request, budget)
        answered = time.monotonic()
        self._metrics.call(outcome.verdict.value, outcome.http_status, answered - started)
        await self._settle(grant, outcome, round((answered - started) * 1000), answered, hold)

    async def _send(self, request: httpx.Request, budget: float) -> Outcome:
        try:
            # A total deadline, not httpx's per-read one: a call must end well before
            # RECLAIM_IDLE_SECONDS, or another worker could take its entry and call again.
            with anyio.fail_after(budget):
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
        return classify_response(response, read_headers=self._read_headers)

    async def _settle(
        self, grant: Grant, outcome: Outcome, duration_ms: int, answered: float, hold: Hold
    ) -> None:
        entry_id = grant.entry.id
        if outcome.announced is not None and grant.key not in self._key_tokens:
            # Before the call leaves the flight: the announcement counts the others in it.
            # A key's own token has a quota of its own, which the API's limits are not.
            member = flight_member(entry_id, grant.stamp, grant.cost)
            await self._listener.heard(Said(outcome.announced, grant.stamp, member, answered))
        if outcome.verdict is Verdict.OK:
            status = outcome.http_status or 0
            success = Success(
                entry_id,
                status,
                duration_ms,
                grant.attempt,
                grant.stamp,
                answered,
                grant.cost,
                grant.key,
            )
            recorded = await self._acker.ack(success, hold)
        elif outcome.verdict is Verdict.RETRY and grant.attempt < self._settings.max_attempts:
            delay = retry_delay(
                outcome,
                grant.attempt,
                self._settings.retry_backoff_seconds,
                self._settings.retry_backoff_max_seconds,
                self._rng,
            )
            if outcome.rate_limited:
                await self._after_429(outcome.retry_after, delay, grant.key)
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
                await self._after_429(outcome.retry_after, 0.0, grant.key)
            reason, kind = outcome.reason, "rejected"
            if outcome.verdict is Verdict.RETRY:
                kind = "exhausted"
                reason = (
                    f"gave up after {grant.attempt} attempt{'s' if grant.attempt != 1 else ''} "
                    f"({self._max_attempts}): {reason}"
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
                cost=grant.cost,
                key=grant.key,
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

    async def _after_429(self, retry_after: float | None, delay: float, key: str) -> None:
        """After a 429: close the API's limits for every worker until Retry-After (without
        one, for the retry's delay; with RATE_ADAPT, not at all: lowering the limits is the
        answer), and with RATE_ADAPT lower them. When the call carried its key's own token
        (tokens_file), whose quota the 429 is about, that key's limits alone close (none
        without key_limits: the retry's delay keeps to Retry-After)."""
        adapt = self._limiter.adapt
        seconds = retry_after if retry_after is not None else (0.0 if adapt else delay)
        if key in self._key_tokens:
            if self._limiter.key_limits is None or seconds <= 0:
                return
            closed, _ = await self._guard.run(
                lambda: self._limiter.after_429(seconds, key), "closing a key's limits after a 429"
            )
            log.warning(
                "the API answered 429 to a key's own token: its limits closed for %.1fs", closed
            )
            return
        if seconds <= 0 and not adapt:
            return
        closed, factor = await self._guard.run(
            lambda: self._limiter.after_429(seconds), "closing the window after a 429"
        )
        if closed > 0:
            log.warning("the API answered 429: limits closed for every worker for %.1fs", closed)
        if adapt and factor != self._factor:
            self._factor = factor  # said once for each step down, not for each 429
            log.info(
                "the API answered 429: the fleet's limits are at %.2f of LIMITS (%s)",
                factor,
                self._limiter.limits.scaled(factor),
            )

    async def _bury_uncalled(self, grant: Grant, reason: str, kind: str) -> None:
        """Dead-letter a granted entry without calling it: its call leaves the flight unmade."""
        await self.bury(
            grant.entry.id,
            reason,
            kind,
            last_status=kind,
            attempts=grant.attempt - 1,
            stamp=grant.stamp,
            cost=grant.cost,
            key=grant.key,
        )

    async def bury(
        self, entry_id: str, reason: str, kind: str, *, last_status: str, **details: Any
    ) -> bool:
        """Dead-letter, counted by `kind`: invalid, rejected (4xx), exhausted, interrupted."""
        recorded = await self._queue.bury(entry_id, reason, last_status=last_status, **details)
        if recorded:
            self._metrics.dead_letters.labels(kind).inc()
        return recorded
