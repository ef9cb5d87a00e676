"""Successes are acknowledged in batches: the calls that end during one Redis round trip share
the next script call, or are recorded by the take that follows them; a batch cut short by a stop
does not strand the calls waiting on it, and each call's capacity comes back exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import anyio
import pytest

from ratedispatch.queue import Queue, Success
from ratedispatch.worker.acks import Acker
from ratedispatch.worker.capacity import Capacity, Hold

pytestmark = pytest.mark.anyio


class SlowQueue:
    """Stands in for Queue.ack_many: each call is one round trip that the test releases."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = anyio.Event()
        self.started = anyio.Event()

    async def ack_many(self, successes: Sequence[Success]) -> list[bool]:
        self.batches.append([s.entry_id for s in successes])
        self.started.set()
        await self.release.wait()
        return [not s.entry_id.startswith("lost") for s in successes]


def success(entry_id: str) -> Success:
    return Success(entry_id, 200, 1, 1, "1")


def held(capacity: Capacity) -> Hold:
    """One unit of `capacity`, reserved as a call's is."""
    assert capacity.reserve(1) == 1
    return Hold(capacity)


async def test_calls_that_end_during_a_round_trip_share_the_next_batch() -> None:
    queue = SlowQueue()
    capacity = Capacity(4)
    acker = Acker(cast(Queue, queue), capacity)
    results: dict[str, bool] = {}

    async def ack(entry_id: str) -> None:
        results[entry_id] = await acker.ack(success(entry_id), held(capacity))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ack, "1-0")
        await queue.started.wait()  # the first batch is on its way to Redis
        for entry_id in ("2-0", "lost-3", "4-0"):
            tg.start_soon(ack, entry_id)
        await anyio.wait_all_tasks_blocked()
        queue.release.set()
    assert queue.batches == [["1-0"], ["2-0", "lost-3", "4-0"]]
    assert results == {"1-0": True, "2-0": True, "lost-3": False, "4-0": True}
    assert capacity.free == 4


async def test_a_writer_cut_short_hands_the_waiting_successes_to_another_caller() -> None:
    queue = SlowQueue()
    capacity = Capacity(2)
    acker = Acker(cast(Queue, queue), capacity)
    later: list[bool] = []

    async def ack_later() -> None:
        later.append(await acker.ack(success("2-0"), held(capacity)))

    writer = anyio.CancelScope()

    async def first() -> None:
        with writer:
            await acker.ack(success("1-0"), held(capacity))

    with anyio.fail_after(5):  # a stranded caller would wait for ever
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await queue.started.wait()
            tg.start_soon(ack_later)
            await anyio.wait_all_tasks_blocked()
            writer.cancel()  # the writer stops mid-batch (a stop's deadline, say)
            await anyio.wait_all_tasks_blocked()
            queue.release.set()
    # The cut batch is written again by the caller still waiting, with its own success.
    assert queue.batches == [["1-0"], ["1-0", "2-0"]]
    assert later == [True]
    assert capacity.free == 2  # the cut writer's call gave its capacity back, once


async def test_a_take_records_the_successes_waiting_and_gets_their_capacity() -> None:
    queue = SlowQueue()
    capacity = Capacity(3)
    acker = Acker(cast(Queue, queue), capacity)
    results: dict[str, bool] = {}

    async def ack(entry_id: str) -> None:
        results[entry_id] = await acker.ack(success(entry_id), held(capacity))

    async with anyio.create_task_group() as tg:
        with acker.taking():  # a take on its way: the successes wait for it, not for a writer
            for entry_id in ("1-0", "lost-2"):
                tg.start_soon(ack, entry_id)
            await anyio.wait_all_tasks_blocked()
            assert await capacity.wait_free(lambda: acker.waiting) == 3
            claim = acker.claim()
        assert claim.units == 2 and [s.entry_id for s in claim.successes] == ["1-0", "lost-2"]
        assert acker.waiting == 0 and capacity.free == 1
        await anyio.wait_all_tasks_blocked()
        claim.recorded([True, False])
    assert queue.batches == []  # no script call of their own
    assert results == {"1-0": True, "lost-2": False}
    assert capacity.free == 1  # the two units are the take's now, for the calls it starts


async def test_a_take_cut_short_leaves_its_successes_to_a_writer() -> None:
    queue = SlowQueue()
    queue.release.set()
    capacity = Capacity(2)
    acker = Acker(cast(Queue, queue), capacity)
    results: dict[str, bool] = {}

    async def ack(entry_id: str) -> None:
        results[entry_id] = await acker.ack(success(entry_id), held(capacity))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with acker.taking():
                tg.start_soon(ack, "1-0")
                await anyio.wait_all_tasks_blocked()
                claim = acker.claim()
            claim.failed()
            # The success holds its call's capacity again, until it is recorded after all.
            assert capacity.free == 1
    assert queue.batches == [["1-0"]]
    assert results == {"1-0": True}
    assert capacity.free == 2
