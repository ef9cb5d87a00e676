"""Riding out Redis outages: retry with backoff, one log line as one starts and one as it ends.

An outage is Redis not answering (a restart, a failover, the network), or Redis answering that
it refuses the command for now: OOM (maxmemory reached), MISCONF (persistence failing), BUSY (a
script running long), LOADING, READONLY, MASTERDOWN, TRYAGAIN, CLUSTERDOWN. Each clears by
itself, so a worker waits it out instead of exiting: a crash loop across a fleet helps nobody.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from redis import exceptions as rexc

from .settings import mask_url

T = TypeVar("T")
log = logging.getLogger("ratedispatch.redis")

# Errors that mean "Redis is not answering right now", as opposed to a bad command.
UNREACHABLE: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,  # includes BusyLoadingError (LOADING after a restart)
    rexc.TimeoutError,
    OSError,
)
# The error codes with which Redis refuses a command for now. redis-py gives some their own
# class (and drops the code from the message), the others arrive as a plain ResponseError.
REFUSED_CLASSES: dict[type[BaseException], str] = {
    rexc.OutOfMemoryError: "OOM",
    rexc.BusyLoadingError: "LOADING",
    rexc.ReadOnlyError: "READONLY",  # a failover left us talking to a replica
    rexc.TryAgainError: "TRYAGAIN",
    rexc.MasterDownError: "MASTERDOWN",  # before its base class, ClusterDownError
    rexc.ClusterDownError: "CLUSTERDOWN",
}
REFUSED_CODES = frozenset({"MISCONF", "BUSY", *REFUSED_CLASSES.values()})


def refusal(exc: BaseException) -> str | None:
    """The code with which Redis refused a command for now (e.g. "OOM"), or None."""
    for cls, code in REFUSED_CLASSES.items():
        if isinstance(exc, cls):
            return code
    if isinstance(exc, rexc.ResponseError):
        code = str(exc).split(" ", 1)[0]
        if code in REFUSED_CODES:
            return code
    return None


def is_nogroup(exc: BaseException) -> bool:
    return isinstance(exc, rexc.ResponseError) and str(exc).startswith("NOGROUP")


class RedisGuard:
    """Runs Redis operations until they succeed, sharing one outage state across all loops.

    Every operation it runs must be safe to repeat: its effect may have happened even though
    the answer was lost. The queue's scripts are written so (each checks ownership first); a
    script Redis refuses (OOM at its first write, BUSY, READONLY...) has changed nothing.
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
        # Why the current outage is one, for /healthz: None when Redis answers.
        self.trouble: str | None = None
        self.refused = False  # the current outage is Redis refusing, not Redis away
        # What Redis refused in the current outage. Redis out of memory still answers reads,
        # and some writes: only when a refused kind of operation succeeds has it ended.
        self._refused_ops: set[str] = set()
        self.last_ok = time.monotonic()

    def recovered_within(self, seconds: float) -> bool:
        """True while down, or if the last outage ended less than `seconds` ago."""
        if self._down_since is not None:
            return True
        return self._up_since is not None and time.monotonic() - self._up_since < seconds

    def down_for(self) -> float:
        """Seconds since the current outage began (0 when Redis answers)."""
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    async def run(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        delay = 0.05
        while True:
            try:
                result = await op()
            except UNREACHABLE as exc:
                if isinstance(exc, rexc.BusyLoadingError):
                    self._down(exc, what, refused="LOADING")
                else:
                    self._down(exc, what)
                    await self._drop_connections()
            except rexc.ResponseError as exc:
                code = refusal(exc)
                if code is not None:
                    self._down(exc, what, refused=code)
                elif is_nogroup(exc) and self._on_nogroup is not None:
                    log.warning("the consumer group is gone (%s); creating it again", exc)
                    try:
                        await self._on_nogroup()
                    except UNREACHABLE as again:
                        self._down(again, what)
                    continue
                else:
                    raise
            else:
                self._up(what)
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

    def _down(self, exc: BaseException, what: str, *, refused: str | None = None) -> None:
        if refused is not None:
            detail = str(exc)
            if not detail.startswith(refused):
                detail = f"{refused} {detail}"
            self.trouble = f"Redis at {self._url} refuses commands ({detail})"
        else:
            self.trouble = f"Redis at {self._url} is unreachable ({type(exc).__name__}: {exc})"
        self.refused = refused is not None
        if refused is not None:
            self._refused_ops.add(what)
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("%s during %s; retrying with backoff", self.trouble, what)

    def _up(self, what: str) -> None:
        self.last_ok = time.monotonic()
        if self._refused_ops and what not in self._refused_ops:
            return  # a read while writes are refused: the episode goes on
        if self._down_since is not None:
            log.warning(
                "Redis at %s %s again after %.1f s",
                self._url,
                "accepts commands" if self.refused else "is reachable",
                time.monotonic() - self._down_since,
            )
            self._down_since = None
            self.trouble = None
            self.refused = False
            self._refused_ops.clear()
            self._up_since = time.monotonic()
