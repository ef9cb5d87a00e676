"""The reader: new entries from the stream go straight to calls (the fast path) or into their
API's priority index, in one take per API; entries another process left are indexed first.

Each entry goes to its API's lane (entry field `api`, when there are several APIs). The reader
keeps, per lane, whether the fast path is open (nothing waited in the lane's index or for a
backoff at the last look) and the entries it kept back (READ_ON) to bring with its next read;
and when it last took.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import ExitStack

import anyio

from ..apis import DEFAULT
from ..errors import InvalidTask
from ..queue.entries import Entry, Grant, TakeStatus
from ..settings import Settings
from ..task import Task, parse_entry
from .acks import Claim, gather
from .capacity import Capacity
from .lanes import Lane

READ_BATCH = 500
# How long an idle reader without a blocking read (the embedded fakeredis) waits between reads,
# and a reader under back-pressure waits for the index to drain.
IDLE_POLL_SECONDS = 0.25
# Redis work that must not be cut in half by a stop (a take whose grants would be orphaned).
SHIELD_SECONDS = 5.0

Fresh = list[tuple[Entry, Task]]


class Reader:
    def __init__(
        self,
        settings: Settings,
        lanes: Mapping[str, Lane],
        capacity: Capacity,
        *,
        start_calls: Callable[[Lane, Sequence[Grant], int], None],
        bury_invalid: Callable[[str, str], Awaitable[object]],
        read_block_ms: int,
        routed: bool = False,
    ) -> None:
        """`start_calls(lane, grants, reserved)` calls the grants on the `reserved` capacity
        and releases the rest; `bury_invalid(entry id, reason)` dead-letters an invalid entry.
        `routed`: entries name their API in the field `api` (RATEDISPATCH_CONFIG is set)."""
        self._settings = settings
        self._lanes = lanes
        self._apis = frozenset(lanes) if routed else None
        self._key_fields = {
            name: lane.api.settings.key_field
            for name, lane in lanes.items()
            if lane.api.settings.key_field is not None
        }
        self._stream = lanes[DEFAULT].queue  # reads, which are the stream's, not a lane's
        self._capacity = capacity
        self._start_calls = start_calls
        self._bury_invalid = bury_invalid
        # 0: poll instead of XREADGROUP BLOCK (the embedded fakeredis does not wake blocked reads)
        self._read_block_ms = read_block_ms
        # Entries read and kept back (READ_ON): they come back with the reader's next read.
        self._carry: dict[Lane, Fresh] = {}
        # Set once the entries a previous process of our name left are indexed again.
        self.started = anyio.Event()

    @property
    def fast(self) -> bool:
        """Nothing waited in any lane's index at the last look."""
        return all(lane.fast for lane in self._lanes.values())

    def _waiting(self) -> int:
        """Successes waiting to be recorded, in every lane: a take can record them."""
        return sum(lane.acker.waiting for lane in self._lanes.values())

    def _carried(self) -> int:
        return sum(len(fresh) for fresh in self._carry.values())

    async def run(self) -> None:
        try:
            await self._read()
        finally:
            await self._index_carry()  # stopping: what we kept back is for any worker

    async def index_held(self, entries: Sequence[Entry], *, reread: bool) -> None:
        """Entries reclaimed or left by a previous process: into their API's priority index."""
        with anyio.move_on_after(SHIELD_SECONDS, shield=True):
            for lane, valid in (await self._route(entries)).items():
                await lane.queue.index_held(((e.id, t) for e, t in valid), reread=reread)
                lane.fast = False
                lane.wake_dispatch()

    async def _index_carry(self) -> None:
        """Entries kept back (READ_ON) go into the priority index without waiting for more."""
        if self._carry:
            with anyio.move_on_after(SHIELD_SECONDS, shield=True):
                for lane, fresh in list(self._carry.items()):
                    await lane.queue.index(fresh)
                    del self._carry[lane]

    async def _read(self) -> None:
        after = "0"
        while True:  # first, entries a previous process with our consumer name left behind
            entries = await self._stream.read_own_pending(READ_BATCH, after)
            if not entries:
                break
            after = entries[-1].id
            await self.index_held(entries, reread=True)
        # Only now may the dispatch loops take: an entry a take hands to this consumer would
        # else be read again above, indexed a second time and called twice.
        self.started.set()
        while True:
            fast = self.fast and not self._carry
            if fast:
                # Nothing waits in an index: read only what can be called now, so the entries
                # go straight to their calls (anything read beyond would be indexed first).
                # Capacity about to come back counts: a take records the successes waiting.
                await self._capacity.wait_free(self._waiting)
            else:
                indexed = 0
                for lane in self._lanes.values():
                    indexed += await lane.queue.index_size()
                room = self._settings.max_waiting - indexed - self._carried()
                if room <= 0:
                    # Back-pressure: the backlog stays in the stream until the indexes drain.
                    await self._index_carry()
                    await anyio.sleep(IDLE_POLL_SECONDS)
                    continue
            # A success waiting is recorded by the take that follows this read, so the read
            # does not block (nor does one that carries entries: they wait for it).
            claiming = [lane for lane in self._lanes.values() if lane.acker.waiting]
            with ExitStack() as taking:
                for lane in claiming:
                    taking.enter_context(lane.acker.taking())
                if fast:
                    await gather(self._capacity, self._waiting())
                    count = self._capacity.free + self._waiting()
                    if not count:  # a dispatch loop took it meanwhile
                        continue
                else:
                    count = min(READ_BATCH, room)
                block_ms = 0 if self._carry or claiming else self._read_block_ms
                entries = await self._stream.read_new(count, block_ms)
                # Nothing read: the takes record the successes all the same (else the reader
                # would read again at once, and the writers it holds back would wait).
                # Every success waiting by now, also those that ended during the read.
                claims = {
                    lane: lane.acker.claim() for lane in self._lanes.values() if lane.acker.waiting
                }
            if entries or self._carry or claims:
                with anyio.move_on_after(SHIELD_SECONDS, shield=True):
                    # Entries just read are pending under our name: finish with them even when
                    # stopping.
                    await self._admit(entries, claims, drained=len(entries) < count)
            elif not self._read_block_ms:
                await anyio.sleep(IDLE_POLL_SECONDS)

    async def _admit(
        self, entries: Sequence[Entry], claims: dict[Lane, Claim], *, drained: bool
    ) -> None:
        """Just-read entries, by API: called at once when nothing waits or competes with them
        and capacity is free (in one script, the fast path), else indexed; or, when more is
        unread, kept back to go in with it (so the index never holds part of a backlog that
        another worker could give a slot from while better tasks are still unread). Each
        lane's take records the successes of its claim, whose capacity is the take's."""
        try:
            routed = await self._route(entries)
            for lane in self._lanes.values():
                claim = claims.pop(lane, None)
                fresh = self._carry.pop(lane, []) + routed.get(lane, [])
                if claim is not None or fresh:
                    await self._take(lane, fresh, claim or Claim.none(), drained=drained)
        finally:
            for claim in claims.values():  # cut short before their take
                claim.failed()

    async def _take(self, lane: Lane, fresh: Fresh, claim: Claim, *, drained: bool) -> None:
        take, reserved = None, claim.units
        try:
            want = 0
            if not self._capacity.hungry_besides(lane.name):
                reserved += self._capacity.reserve(max(len(fresh) - claim.units, 0))
                want = min(len(fresh), reserved)
            # else another API waits for capacity: the successes' goes back once recorded
            if fresh or claim.successes:
                lane.last_take = time.monotonic()
                take = await lane.queue.take(
                    want,
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
            self._start_calls(lane, take.grants if take else [], reserved)
        if take is None:
            return
        claim.recorded(take.recorded)
        if take.status is TakeStatus.READ_ON:
            self._carry[lane] = fresh
            lane.fast = False
            return
        if not fresh:
            return
        lane.fast = take.fast and len(take.grants) == len(fresh)
        if not lane.fast and drained:
            lane.wake_dispatch()  # the index holds what the stream held: the loop takes

    async def _route(self, entries: Sequence[Entry]) -> dict[Lane, Fresh]:
        """The valid entries with their task, by lane; the invalid ones are dead-lettered, and
        so are those that cost more than their API's limit terms can ever grant."""
        routed: dict[Lane, Fresh] = {}
        for entry in entries:
            try:
                task = parse_entry(
                    entry.id,
                    entry.fields,
                    max_body_bytes=self._settings.max_body_bytes,
                    apis=self._apis,
                    key_fields=self._key_fields,
                )
            except InvalidTask as exc:
                await self._bury_invalid(entry.id, exc.reason)
                continue
            lane = self._lanes[task.api]
            refusal = lane.limiter.refusal(task.cost)
            if refusal is not None:
                await self._bury_invalid(entry.id, refusal)
                continue
            routed.setdefault(lane, []).append((entry, task))
        return routed
