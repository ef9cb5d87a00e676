"""The reader: new entries from the stream go straight to calls (the fast path) or into the
priority index, in one take each; entries another process left are indexed first.

It keeps three facts between reads: whether the fast path is open (nothing waited in the index
or for a backoff at the last look), the entries it kept back (READ_ON) to bring with its next
read, and when it last took.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext

import anyio

from ..errors import InvalidTask
from ..queue.entries import Entry, Grant, TakeStatus
from ..queue.queue import Queue
from ..settings import Settings
from ..task import Task, parse_entry
from .acks import Acker, Claim
from .capacity import Capacity

READ_BATCH = 500
# How long an idle reader without a blocking read (the embedded fakeredis) waits between reads,
# and a reader under back-pressure waits for the index to drain.
IDLE_POLL_SECONDS = 0.25
# Redis work that must not be cut in half by a stop (a take whose grants would be orphaned).
SHIELD_SECONDS = 5.0


class Reader:
    def __init__(
        self,
        settings: Settings,
        queue: Queue,
        capacity: Capacity,
        acker: Acker,
        *,
        start_calls: Callable[[Sequence[Grant], int], None],
        bury_invalid: Callable[[str, str], Awaitable[object]],
        wake_dispatch: Callable[[], None],
        read_block_ms: int,
    ) -> None:
        """`start_calls(grants, reserved)` calls the grants on the `reserved` capacity and
        releases the rest; `bury_invalid(entry id, reason)` dead-letters an invalid entry;
        `wake_dispatch()` tells the dispatch loop the index has work."""
        self._settings = settings
        self._limits = settings.limit_terms
        self._queue = queue
        self._capacity = capacity
        self._acker = acker
        self._start_calls = start_calls
        self._bury_invalid = bury_invalid
        self._wake_dispatch = wake_dispatch
        # 0: poll instead of XREADGROUP BLOCK (the embedded fakeredis does not wake blocked reads)
        self._read_block_ms = read_block_ms
        # True while the last look found nothing waiting in the index or for a backoff. False
        # until the first look: a worker that starts on a backlog reads it in whole batches, so
        # workers starting together do not split it in small reads and give slots to the best
        # of their own share only.
        self.fast = False
        self.last_take = float("-inf")  # time.monotonic() of the reader's last take
        # Entries read and kept back (READ_ON): they come back with the reader's next read.
        self._carry: list[tuple[Entry, Task]] = []

    def close_fast_path(self) -> None:
        """Something waits in the index now: the next reads go through the take's checks."""
        self.fast = False

    async def run(self) -> None:
        try:
            await self._read()
        finally:
            await self._index_carry()  # stopping: what we kept back is for any worker

    async def index_held(self, entries: Sequence[Entry], *, reread: bool) -> None:
        """Entries reclaimed or left by a previous process: into the priority index."""
        with anyio.move_on_after(SHIELD_SECONDS, shield=True):
            valid = await self._parse(entries)
            if valid:
                await self._queue.index_held(((e.id, t) for e, t in valid), reread=reread)
                self.fast = False
                self._wake_dispatch()

    async def _index_carry(self) -> None:
        """Entries kept back (READ_ON) go into the priority index without waiting for more."""
        if self._carry:
            with anyio.move_on_after(SHIELD_SECONDS, shield=True):
                await self._queue.index(self._carry)
                self._carry = []

    async def _read(self) -> None:
        after = "0"
        while True:  # first, entries a previous process with our consumer name left behind
            entries = await self._queue.read_own_pending(READ_BATCH, after)
            if not entries:
                break
            after = entries[-1].id
            await self.index_held(entries, reread=True)
        while True:
            if self.fast and not self._carry:
                # Nothing waits in the index: read only what can be called now, so the entries
                # go straight to their calls (anything read beyond would be indexed first).
                # Capacity about to come back counts: the take records the successes waiting.
                await self._capacity.wait_free(lambda: self._acker.waiting)
            else:
                indexed = await self._queue.index_size()
                room = self._settings.max_waiting - indexed - len(self._carry)
                if room <= 0:
                    # Back-pressure: the backlog stays in the stream until the index drains.
                    await self._index_carry()
                    await anyio.sleep(IDLE_POLL_SECONDS)
                    continue
            # A success waiting is recorded by the take that follows this read, so the read
            # does not block (nor does one that carries entries: they wait for it).
            claiming = bool(self._acker.waiting)
            with self._acker.taking() if claiming else nullcontext():
                if self.fast and not self._carry:
                    await self._acker.gather()
                    count = self._capacity.free + self._acker.waiting
                    if not count:  # the dispatch loop took it meanwhile
                        continue
                else:
                    count = min(READ_BATCH, room)
                block_ms = 0 if self._carry or claiming else self._read_block_ms
                entries = await self._queue.read_new(count, block_ms)
                # Nothing read: the take records the successes all the same (else the reader
                # would read again at once, and the writer it holds back would wait).
                claim = self._acker.claim() if entries or self._carry or claiming else None
            if claim is not None:
                with anyio.move_on_after(SHIELD_SECONDS, shield=True):
                    # Entries just read are pending under our name: finish with them even when
                    # stopping.
                    await self._admit(entries, claim, drained=len(entries) < count)
            elif not self._read_block_ms:
                await anyio.sleep(IDLE_POLL_SECONDS)

    async def _admit(self, entries: Sequence[Entry], claim: Claim, *, drained: bool) -> None:
        """Just-read entries: called at once when nothing waits or competes with them and
        capacity is free (in one script, the fast path), else indexed; or, when more is
        unread, kept back to go in with it (so the index never holds part of a backlog that
        another worker could give a slot from while better tasks are still unread). The same
        script records the successes of `claim`, whose capacity is the take's."""
        take, reserved = None, claim.units
        try:
            fresh = self._carry + await self._parse(entries)
            self._carry = []
            reserved += self._capacity.reserve(max(len(fresh) - claim.units, 0))
            if fresh or claim.successes:
                self.last_take = time.monotonic()
                take = await self._queue.take(
                    min(len(fresh), reserved),
                    fresh,
                    drained=drained,
                    keep=len(fresh) < READ_BATCH,
                    successes=claim.successes,
                )
        finally:
            # Cut short (Redis away past the shield's deadline): the capacity reserved goes back
            # all the same, and the successes wait for another writer, holding their own.
            if take is None:
                claim.failed()
                reserved -= claim.units
            self._start_calls(take.grants if take else [], reserved)
        if take is None:
            return
        claim.recorded(take.recorded)
        if take.status is TakeStatus.READ_ON:
            self._carry = fresh
            self.fast = False
            return
        if not fresh:
            return
        self.fast = take.fast and len(take.grants) == len(fresh)
        if not self.fast and drained:
            self._wake_dispatch()  # the index holds what the stream held: the loop takes

    async def _parse(self, entries: Sequence[Entry]) -> list[tuple[Entry, Task]]:
        """The valid entries with their task; the invalid ones are dead-lettered, and so are
        those that cost more than a limit term can ever grant."""
        valid = []
        for entry in entries:
            try:
                task = parse_entry(
                    entry.id, entry.fields, max_body_bytes=self._settings.max_body_bytes
                )
            except InvalidTask as exc:
                await self._bury_invalid(entry.id, exc.reason)
                continue
            refusal = self._limits.refusal(task.cost)
            if refusal is not None:
                await self._bury_invalid(entry.id, refusal)
                continue
            valid.append((entry, task))
        return valid
