"""Writing tasks: what `ratedispatch enqueue` and the demo do, and any Python producer can."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping

from redis.asyncio import Redis

from .task import RESERVED, parse_entry


def build_entry(
    endpoint: str,
    *,
    method: str | None = None,
    priority: str | None = None,
    fields: Mapping[str, str] | None = None,
    body: str | None = None,
    headers: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
    cost: int | str | None = None,
    api: str | None = None,
    apis: Collection[str] | None = None,
    max_body_bytes: int = 1_048_576,
) -> dict[str, str]:
    """The stream entry for a task, validated as a worker would (InvalidTask if it would fail).
    `api`: the API it is for; `apis`: the names RATEDISPATCH_CONFIG gives, to check it against
    (without them, any name a worker may know)."""
    entry: dict[str, str] = {"endpoint": endpoint}
    for name, value in (fields or {}).items():
        if name in RESERVED:
            raise ValueError(f"field {name!r} is reserved; use its own option")
        entry[name] = value
    optional = {
        "method": method,
        "priority": priority,
        "body": body,
        "headers": json.dumps(dict(headers)) if headers else None,
        "idempotency_key": idempotency_key,
        "cost": None if cost is None else str(cost),
    }
    if api is not None:
        if "api" in entry:
            raise ValueError("field 'api' is reserved; use its own option")
        entry["api"] = api
    entry.update({k: v for k, v in optional.items() if v is not None})
    if api is not None and apis is None:
        apis = {api}  # a worker with RATEDISPATCH_CONFIG says whether it knows the name
    parse_entry("0-1", entry, max_body_bytes=max_body_bytes, apis=apis)
    return entry


async def enqueue(redis: Redis, stream: str, entry: Mapping[str, str]) -> str:
    """XADD the entry; returns its id."""
    entry_id = await redis.xadd(stream, dict(entry))  # type: ignore[arg-type]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
