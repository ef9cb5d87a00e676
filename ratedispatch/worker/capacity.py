"""A worker's capacity: CONCURRENCY calls in flight at most, reserved before a take asks Redis
for slots (so a worker never takes slots it cannot call on), and held by each call until its
outcome is recorded."""

from __future__ import annotations

from collections.abc import Callable

import anyio


class Capacity:
    def __init__(self, concurrency: int) -> None:
        self._free = anyio.Semaphore(concurrency)
        self._freed = anyio.Event()
        # The APIs (lanes) whose dispatch loop waits for capacity now, and how many waits each.
        self._hungry: dict[str, int] = {}

    def hungry_besides(self, api: str) -> bool:
        """Another API's dispatch loop waits for capacity: a take for `api` then gives back the
        capacity of the calls it records instead of starting calls on it, so that an API with a
        long backlog does not keep the worker's capacity for itself as its calls end."""
        return any(count and name != api for name, count in self._hungry.items())

    @property
    def free(self) -> int:
        return self._free.value

    def reserve(self, most: int) -> int:
        """Acquire up to `most` without waiting; returns how many."""
        n = 0
        while n < most and self._free.value:
            self._free.acquire_nowait()
            n += 1
        return n

    def release(self, n: int) -> None:
        for _ in range(n):
            self._free.release()
        if n:
            self.poke()

    def poke(self) -> None:
        """Wake whoever waits in wait_free: what it counts may have changed."""
        self._freed.set()

    async def wait_free(self, also: Callable[[], int] = lambda: 0, api: str = "") -> int:
        """Wait until some is free, or `also()` (capacity about to come back: calls whose
        outcome a take can record) is above 0; returns the two together. `api`: the API whose
        dispatch loop waits (see hungry_besides)."""
        if not self._free.value + also():
            self._hungry[api] = self._hungry.get(api, 0) + 1
            try:
                while not self._free.value + also():
                    freed = self._freed
                    await freed.wait()
                    if self._freed is freed:  # else another waiter renewed it; may be set anew
                        self._freed = anyio.Event()
            finally:
                self._hungry[api] -= 1
        return self._free.value + also()


class Hold:
    """One unit of capacity, held by one call: given back once (released), or handed over with
    the call's outcome to the take that records it, for one of the calls that take starts."""

    __slots__ = ("_capacity", "_held")

    def __init__(self, capacity: Capacity) -> None:
        self._capacity = capacity
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._capacity.release(1)

    def hand_over(self) -> bool:
        """The unit now belongs to whoever takes it; False if it was already given back."""
        held, self._held = self._held, False
        return held

    def take_back(self) -> None:
        """A take it was handed over to did not run: the call holds its unit again (the take's
        caller does not release it), until its outcome is recorded after all."""
        self._held = True
