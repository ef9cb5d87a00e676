"""Riding out Redis outages: retry with backoff, one log line as one starts and one as it ends.

An outage is Redis not answering (a restart, a failover, the network), or Redis answering that
it refuses the command for now: OOM (maxmemory reached), MISCONF (persistence failing), BUSY (a
script running long), LOADING, READONLY, MASTERDOWN, TRYAGAIN, CLUSTERDOWN, NOREPLICAS. Each
clears by itself (READONLY and MASTERDOWN once the pool is dropped and reconnects to the primary),
so a worker waits it out instead of exiting: a crash loop across a fleet helps nobody.
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
REFUSED_CODES = frozenset({"MISCONF", "BUSY", "NOREPLICAS", *REFUSED_CLASSES.values()})
# Refusals that mean the connection reached a replica: the pool is dropped to find the primary.
REPLICA_CODES = frozenset({"READONLY", "MASTERDOWN"})
# A refusal ends when the operation Redis refused succeeds, or when nothing was refused for this
# long: Redis out of memory still answers reads and some writes, which end nothing.
REFUSAL_QUIET_SECONDS = 1.0


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
        self._refused_at = float("-inf")  # time.monotonic() of the last refusal
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
        refused = False  # this operation met a refusal: its own success ends the episode
        while True:
            try:
                result = await op()
            except Exception as exc:
                if not await self._outage(exc, what):
                    raise
                refused = refused or refusal(exc) is not None
                if is_nogroup(exc):
                    continue
            else:
                self._up(ended=refused)
                return result
            await anyio.sleep(delay)
            delay = min(delay * 2, self._max_delay)

    async def _outage(self, exc: Exception, what: str) -> bool:
        """Note an error that is an outage (and act on it); False for any other error."""
        if isinstance(exc, UNREACHABLE) and not isinstance(exc, rexc.BusyLoadingError):
            self._down(exc, what)
            await self._drop_connections()
            return True
        code = refusal(exc)
        if code is not None:
            self._down(exc, what, refused=code)
            if code in REPLICA_CODES:
                # Talking to a replica (a failover demoted our primary, which still answers):
                # pooled connections stay pinned to it until dropped.
                await self._drop_connections()
            return True
        if is_nogroup(exc) and self._on_nogroup is not None:
            log.warning("the consumer group is gone (%s); creating it again", exc)
            try:
                await self._on_nogroup()
            except Exception as again:
                if not await self._outage(again, what) or is_nogroup(again):
                    raise
            return True
        return False

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
            self._refused_at = time.monotonic()
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("%s during %s; retrying with backoff", self.trouble, what)

    def _up(self, *, ended: bool) -> None:
        """An operation succeeded; `ended`: one that Redis had refused in this outage."""
        self.last_ok = time.monotonic()
        quiet = time.monotonic() - self._refused_at >= REFUSAL_QUIET_SECONDS
        if self.refused and not (ended or quiet):
            return  # a read, or a write that frees memory, while others are refused
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
            self._up_since = time.monotonic()
