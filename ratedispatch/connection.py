"""The Redis connection, and riding out Redis outages: retry with backoff, one line each way."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .settings import mask_url

T = TypeVar("T")
log = logging.getLogger("ratedispatch.redis")

# Errors that mean "Redis is not answering right now", as opposed to a bad command.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,  # includes BusyLoadingError (LOADING after a restart)
    rexc.TimeoutError,
    rexc.ReadOnlyError,  # a failover left us talking to a replica
    rexc.TryAgainError,
    OSError,
)


def socket_timeout_for(reclaim_idle_seconds: float) -> float:
    """How long a worker waits for one Redis reply before it takes the connection for dead.

    Well under RECLAIM_IDLE_SECONDS: a worker whose connection hangs (a Redis host gone without
    a reset) must notice, reconnect and record its outcomes before the others take its entries
    over as abandoned; above the 1 s of a blocking read. 15 s at the default 60 s."""
    return max(2.0, min(15.0, reclaim_idle_seconds / 4))


def connect(url: str, *, socket_timeout: float = 15.0) -> Redis:
    """A client for `url`; retries are ours (RedisGuard), so redis-py's own are off."""
    client: Redis = Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=5.0,
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )
    return client


def is_nogroup(exc: BaseException) -> bool:
    return isinstance(exc, rexc.ResponseError) and str(exc).startswith("NOGROUP")


class RedisGuard:
    """Runs Redis operations until they succeed, sharing one outage state across all loops.

    Every operation it runs must be safe to repeat: its effect may have happened even though
    the answer was lost. The queue's scripts are written so (each checks ownership first).
    """

    def __init__(
        self,
        url: str,
        *,
        on_nogroup: Callable[[], Awaitable[None]] | None = None,
        reset: Callable[[], Awaitable[None]] | None = None,
        max_delay: float = 0.5,
    ) -> None:
        self._url = mask_url(url)
        self._on_nogroup = on_nogroup
        self._reset = reset
        self._max_delay = max_delay
        self._down_since: float | None = None
        self._up_since: float | None = None  # when the last outage ended; None: never down
        self.last_ok = time.monotonic()

    @property
    def outage(self) -> bool:
        return self._down_since is not None

    def recovered_within(self, seconds: float) -> bool:
        """True while down, or if the last outage ended less than `seconds` ago."""
        if self._down_since is not None:
            return True
        return self._up_since is not None and time.monotonic() - self._up_since < seconds

    async def run(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        delay = 0.05
        while True:
            try:
                result = await op()
            except OUTAGE_ERRORS as exc:
                self._down(exc, what)
                await self._drop_connections()
            except rexc.ResponseError as exc:
                if not is_nogroup(exc) or self._on_nogroup is None:
                    raise
                log.warning("the consumer group is gone (%s); creating it again", exc)
                try:
                    await self._on_nogroup()
                except OUTAGE_ERRORS as again:
                    self._down(again, what)
                continue
            else:
                self._up()
                return result
            await anyio.sleep(delay)
            delay = min(delay * 2, self._max_delay)

    async def _drop_connections(self) -> None:
        # After a restart every pooled connection is dead: drop them all at once, rather than
        # meeting them one by one (one failure and one log line each).
        if self._reset is not None:
            try:
                await self._reset()
            except Exception:  # best effort: the next command reconnects anyway
                log.debug("dropping pooled connections failed", exc_info=True)

    def _down(self, exc: BaseException, what: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "Redis at %s is unreachable (%s: %s) during %s; retrying with backoff",
                self._url,
                type(exc).__name__,
                exc,
                what,
            )

    def _up(self) -> None:
        self.last_ok = time.monotonic()
        if self._down_since is not None:
            log.warning(
                "Redis at %s is reachable again after %.1f s",
                self._url,
                time.monotonic() - self._down_since,
            )
            self._down_since = None
            self._up_since = time.monotonic()
