"""Successes recorded in batches, most of them by the next take.

A call that succeeded waits here, holding its capacity, until its outcome is recorded. A take
about to start (the reader's or the dispatch loop's) claims every success waiting and records
them in its own script (queue/take.lua): one script call, one reading and writing of the limits,
and the calls' capacity goes straight to the calls the take starts. What no take claims is
written by the Acker itself: the first success to end while no batch is being written waits a
fraction of a millisecond for others (and for a take that is about to claim them), then writes
everything that ended by then, and goes on while more are waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from ..queue.entries import Success
from ..queue.queue import ACK_BATCH, Queue
from .capacity import Capacity, Hold

# A batch waits this long for more successes, unless it already has LINGER_UNTIL of them. The
# calls wait with it (capacity is held until the outcome is recorded): measured, 0.3 ms gives
# batches that halve the Redis work per task without costing throughput, where 1 ms cost 30%.
LINGER_SECONDS = 0.0003
LINGER_UNTIL = 4


async def gather(capacity: Capacity, waiting: int) -> None:
    """For a take woken by `waiting` successes with no capacity free: let the calls ending
    about now join it (see LINGER_SECONDS)."""
    if 0 < waiting < LINGER_UNTIL and not capacity.free:
        await anyio.sleep(LINGER_SECONDS)


class _Waiter:
    __slots__ = ("claimed", "done", "hold", "recorded", "success", "written")

    def __init__(self, success: Success, hold: Hold) -> None:
        self.success = success
        self.hold = hold
        self.done = anyio.Event()
        self.written = False
        self.recorded = False
        self.claimed = False  # by a take, which records it


class Claim:
    """The successes a take records, and the capacity their calls held: the take's once it has
    recorded them (it counts `units` in what it reserved), theirs again if it does not run."""

    def __init__(self, acker: Acker | None, waiters: list[_Waiter], handed: list[Hold]) -> None:
        self._acker = acker
        self._waiters = waiters
        self._handed = handed
        self.units = len(handed)

    @classmethod
    def none(cls) -> Claim:
        """A take with no successes to record."""
        return cls(None, [], [])

    @property
    def successes(self) -> list[Success]:
        return [w.success for w in self._waiters]

    def recorded(self, recorded: list[bool]) -> None:
        """The take ran: each success recorded (True) or found no longer ours (False)."""
        for waiter, ok in zip(self._waiters, recorded, strict=True):
            waiter.written, waiter.recorded = True, ok
            waiter.done.set()

    def failed(self) -> None:
        """The take did not run (cut short): the successes wait again, for any writer, and hold
        their calls' capacity until then: the take's caller releases only what it reserved
        besides `units`."""
        for hold in self._handed:
            hold.take_back()
        if self._acker is not None:
            self._acker.unclaim(self._waiters)


class Acker:
    def __init__(self, queue: Queue, capacity: Capacity) -> None:
        self._queue = queue
        self._capacity = capacity
        self._waiting: list[_Waiter] = []
        self._writing = False
        self._takers = 0  # takes on their way to claim what waits: writers let them
        self._taken = anyio.Event()

    @property
    def waiting(self) -> int:
        """Successes waiting to be recorded, which a take may claim."""
        return len(self._waiting)

    async def ack(self, success: Success, hold: Hold) -> bool:
        """Record a success, in a take or a batch; False if the entry was no longer ours. The
        call's capacity (`hold`) goes back once it is recorded, or goes to the take that
        records it."""
        waiter = _Waiter(success, hold)
        self._waiting.append(waiter)
        self._capacity.poke()  # a take waiting for capacity can record it and use its capacity
        try:
            while not waiter.written:
                if not self._writing and not waiter.claimed:
                    await self._write_all()
                else:
                    await waiter.done.wait()
                    waiter.done = anyio.Event()  # woken by a writer that stopped: write it
            return waiter.recorded
        finally:
            hold.release()  # no-op once handed over to a take

    @contextmanager
    def taking(self) -> Iterator[None]:
        """A take is on its way (gathering, reading the stream) and will claim what waits before
        this ends: writers wait for it rather than race it to Redis."""
        self._takers += 1
        try:
            yield
        finally:
            self._takers -= 1
            if not self._takers:
                self._taken.set()
                self._taken = anyio.Event()

    async def gather(self) -> None:
        """For a take woken by a success with no capacity free: let the calls ending about now
        join it (see LINGER_SECONDS)."""
        await gather(self._capacity, len(self._waiting))

    def claim(self) -> Claim:
        """Every success waiting (up to ACK_BATCH), for the take about to run to record."""
        waiters, self._waiting = self._waiting[:ACK_BATCH], self._waiting[ACK_BATCH:]
        for waiter in waiters:
            waiter.claimed = True
        return Claim(self, waiters, [w.hold for w in waiters if w.hold.hand_over()])

    def unclaim(self, waiters: list[_Waiter]) -> None:
        """Back to waiting, for any writer."""
        self._waiting[:0] = waiters
        for waiter in waiters:
            waiter.claimed = False
            waiter.done.set()

    async def _write_all(self) -> None:
        self._writing = True
        try:
            if len(self._waiting) < LINGER_UNTIL:
                # Let the calls ending about now join this batch: one script call for several
                # successes is most of the Redis work per task saved, for a millisecond.
                await anyio.sleep(LINGER_SECONDS)
            while self._takers:
                await self._taken.wait()
            while self._waiting:
                batch, self._waiting = self._waiting[:ACK_BATCH], self._waiting[ACK_BATCH:]
                try:
                    recorded = await self._queue.ack_many([w.success for w in batch])
                except BaseException:
                    self._waiting[:0] = batch
                    raise
                for waiter, ok in zip(batch, recorded, strict=True):
                    waiter.written, waiter.recorded = True, ok
                    waiter.hold.release()
                    waiter.done.set()
        finally:
            self._writing = False
            for waiter in self._waiting:  # cut short (a stop): one of them takes over
                waiter.done.set()
