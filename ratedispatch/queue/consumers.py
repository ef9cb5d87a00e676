"""The group's consumers: entries abandoned by workers that died, and records of stopped ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis

from ..guard import RedisGuard
from ..keys import Keys
from . import inputs as i
from .entries import Entry, as_text, field_map


class Consumers:
    """Seen from one consumer (`me`), which takes over what others abandoned."""

    def __init__(self, redis: Redis, keys: Keys, me: str, guard: RedisGuard) -> None:
        self._redis = redis
        self.keys = keys
        self.consumer = me
        self._guard = guard
        self._reclaim = i.RECLAIM.on(redis)
        self._retire = i.RETIRE.on(redis)

    async def retire(self, names: Sequence[str]) -> int:
        """Delete these consumers' records if they hold no entries; returns how many went."""
        if not names:
            return 0

        async def op() -> Any:
            return await self._retire(
                i.StreamKey(self.keys.stream), i.RetireArgs(self.keys.group, names)
            )

        return int(await self._guard.run(op, "removing idle consumers"))

    async def idle(self, min_idle_ms: int) -> list[str]:
        """Worker consumers idle at least `min_idle_ms` that hold nothing: stopped workers."""

        async def op() -> list[str]:
            rows = await self._redis.xinfo_consumers(self.keys.stream, self.keys.group)
            return [
                as_text(row["name"])
                for row in rows
                if as_text(row["name"]) != self.keys.waiting_consumer
                and not row.get("pending")
                and int(row.get("idle", 0)) >= min_idle_ms
            ]

        return await self._guard.run(op, "looking for idle consumers")

    async def stale_ids(self, min_idle_ms: int, count: int) -> list[str]:
        """Pending entries of worker consumers idle at least `min_idle_ms`: their owner is gone.

        The waiting consumer is skipped on purpose: its entries wait for a slot or a backoff.
        """

        async def op() -> list[str]:
            ids: list[str] = []
            consumers = await self._redis.xinfo_consumers(self.keys.stream, self.keys.group)
            for consumer in consumers:
                name = as_text(consumer["name"])
                if name == self.keys.waiting_consumer or not consumer.get("pending"):
                    continue
                rows = await self._redis.xpending_range(
                    self.keys.stream,
                    self.keys.group,
                    "-",
                    "+",
                    count - len(ids),
                    consumername=name,
                    idle=min_idle_ms,
                )
                ids += [as_text(cast(bytes, row["message_id"])) for row in rows]
                if len(ids) >= count:
                    break
            return ids

        return await self._guard.run(op, "looking for abandoned tasks")

    async def reclaim(self, ids: Sequence[str], min_idle_ms: int) -> tuple[list[Entry], int]:
        """Claim abandoned entries for this consumer; returns them and how many were trimmed.

        Claims nothing while Redis is unreachable or came back less than `min_idle_ms` ago:
        Redis counts idle time through its own downtime, so right after an outage every live
        worker's in-flight entry looks abandoned. The check is made before every attempt, so an
        outage in the middle of this very call (retried by the guard) counts too.
        """
        if not ids:
            return [], 0

        async def op() -> Any:
            if self._guard.recovered_within(min_idle_ms / 1000):
                return [], 0
            return await self._reclaim(
                i.StreamKey(self.keys.stream),
                i.ReclaimArgs(self.keys.group, self.consumer, min_idle_ms, ids),
            )

        claimed, dropped = await self._guard.run(op, "reclaiming abandoned tasks")
        entries = [Entry(as_text(i), field_map(flat)) for i, flat in claimed]
        return entries, int(dropped)
