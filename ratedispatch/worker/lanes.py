"""A lane: one API's part of a worker. Its limits, its priority index and takes, its
acknowledger and caller, and what its dispatch loop knows; the stream, the capacity and the
reader are the worker's, shared by every lane.

Each lane takes only for its own API, so an API without room never delays another's calls: its
dispatch loop sleeps until its own limits have room, while the others go on. An API with a pool
of credentials (tokens_env) has a lane for each, with the credential's own limits, all taking
from the API's one index: a task goes to whichever credential has room first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from ..apis import Api
from ..keys import Keys
from ..limits.limiter import Limiter
from ..queue.queue import Queue
from .acks import Acker
from .calls import Caller


@dataclass(eq=False)
class Lane:
    api: Api
    keys: Keys
    limiter: Limiter
    queue: Queue
    acker: Acker
    caller: Caller
    # True while the reader's last look found nothing waiting in this lane's index or for a
    # backoff. False until the first look: a worker that starts on a backlog reads it in whole
    # batches, so workers starting together do not split it in small reads and give slots to
    # the best of their own share only.
    fast: bool = False
    # time.monotonic() of the reader's last take for this API: while it is recent and the fast
    # path open, the reader's takes also promote this API's due retries.
    last_take: float = float("-inf")
    wake: anyio.Event = field(default_factory=anyio.Event)
    # A pool's credential (tokens_env): its variable; '' for an API with one token.
    credential: str = ""
    # Every lane of the API (a pool has one for each credential, all taking from one index).
    siblings: list[Lane] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.api.name

    def wake_dispatch(self) -> None:
        """Its index has work: the dispatch loops of its API take."""
        for lane in self.siblings or [self]:
            lane.wake.set()
