"""What the dispatcher is doing, read from Redis alone: for `ratedispatch status` and the gauges."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from redis import exceptions as rexc
from redis.asyncio import Redis

from ..apis import DEFAULT, Api
from ..keys import Keys
from ..limits.limiter import IN_FLIGHT_TERM, Limiter, LimitsState, TermState
from ..settings import Settings
from ..task import Priority


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Consumer:
    name: str
    pending: int  # entries it holds: in its calls, or read and not yet indexed
    idle_seconds: float
    likely_dead: bool  # idle past RECLAIM_IDLE_SECONDS while holding entries


# The busiest keys `status` shows, at most.
BUSIEST_KEYS = 10


@dataclass(frozen=True, slots=True)
class KeyBacklog:
    key: str
    waiting: int  # tasks waiting for a slot


@dataclass(frozen=True, slots=True)
class KeysStatus:
    """The keys of an API with a key_field (queue/keyed.lua)."""

    field: str  # the key_field
    waiting: int  # keys with tasks waiting for a slot
    without_room: int  # of those, keys whose own key_limits have no room now
    busiest: list[KeyBacklog]  # the keys with the most waiting tasks, most first


@dataclass(frozen=True, slots=True)
class Announced:
    """What the API itself said of its limits (RATE_HEADERS), beside our own view: the fields
    `api_*` of `status --json`, each None when it never said it."""

    api_remaining: int | None = None  # the calls it said remain, in its latest answer
    api_reset_in: float | None = None  # seconds until they are back; None once past
    api_limit: int | None = None  # the quota it stated (the first, with several)
    # How many more the fleet may start before then (obey): api_remaining, less the calls in
    # flight when it was heard and those started since.
    api_left: int | None = None
    api_heard_ago: float | None = None  # seconds since a worker last recorded what it said
    # The quotas the fleet carries as terms (obey), as a term is shown: used/limit, frees in.
    api_terms: list[TermState] = field(default_factory=list)
    # RATE_ADAPT: the factor on every term of LIMITS (1.0: all of them), and the limits it makes.
    adapt_factor: float | None = None
    adapted_limits: str | None = None

    @classmethod
    def of(cls, state: LimitsState, limiter: Limiter) -> Announced:
        heard = state.heard
        adapted = None
        if state.adapt is not None:
            adapted = str(limiter.limits.scaled(state.adapt))
        if heard is None:
            return cls(adapt_factor=state.adapt, adapted_limits=adapted)
        return cls(
            heard.remaining,
            heard.reset_in,
            heard.limit,
            heard.left if heard.reset_in is not None else None,
            heard.age,
            state.carried,
            state.adapt,
            adapted,
        )


@dataclass(frozen=True, slots=True)
class CredentialStatus:
    """One credential of a pool (tokens_env), by its variable: its own copy of the limits."""

    variable: str
    terms: list[TermState]
    calls_in_flight: int
    announced: Announced = field(default_factory=Announced)


@dataclass(frozen=True, slots=True)
class ApiStatus:
    """One API of RATEDISPATCH_CONFIG: its own index, retries and limits."""

    name: str
    waiting: dict[str, int]  # for a slot, by priority
    retrying: int  # waiting out a backoff
    terms: list[TermState]
    calls_in_flight: int
    keys: KeysStatus | None = None  # with a key_field
    # With a pool (tokens_env): each credential's limits; `terms` are then the first's, and
    # `calls_in_flight` all of theirs.
    credentials: list[CredentialStatus] = field(default_factory=list)
    announced: Announced = field(default_factory=Announced)


@dataclass(frozen=True, slots=True)
class Status:
    """Field names are stable: `status --json` prints exactly this."""

    stream: str
    group: str
    group_exists: bool
    stream_length: int
    not_delivered: int | None  # the group's lag; None when Redis cannot tell
    pending: int  # delivered, not yet acknowledged: waiting + retrying + in flight
    waiting: dict[str, int]  # for a slot, by priority
    retrying: int  # waiting out a backoff
    in_flight: int  # held by worker consumers
    dead_letters: int
    results: int | None  # None when results are disabled
    # The fixed-window counter of the first N/D term (without one: the first term).
    window_used: int
    window_limit: int
    window_resets_in: float | None  # seconds; None when no window is open
    # The first term's busy units: in flight, or answered less than its D ago (at most N).
    slots_busy: int
    slot_frees_in: float | None  # seconds until its first busy unit frees; None when none is
    # Every term of LIMITS, and MAX_IN_FLIGHT when set: used, limit, when the next unit frees.
    terms: list[TermState] = field(default_factory=list)
    calls_in_flight: int = 0  # across the fleet, as the limits count them
    consumers: list[Consumer] = field(default_factory=list)
    # With RATEDISPATCH_CONFIG: every API, `default` (the fields above) first. Else empty.
    apis: list[ApiStatus] = field(default_factory=list)
    keys: KeysStatus | None = None  # the default API's, with a key_field
    announced: Announced = field(default_factory=Announced)  # the default API's

    def to_json(self) -> str:
        return json.dumps(_flat(asdict(self)), sort_keys=True)


def _flat(value: Any) -> Any:
    """`announced`'s fields beside their API's own, as `status --json` shows them."""
    if isinstance(value, list):
        return [_flat(item) for item in value]
    if not isinstance(value, dict):
        return value
    flat = {name: _flat(item) for name, item in value.items() if name != "announced"}
    if "announced" in value:
        flat.update(_flat(value["announced"]))
    return flat


async def collect(
    redis: Redis, settings: Settings, apis: Mapping[str, Api] | None = None
) -> Status:
    """One consistent-enough snapshot (several reads, not one transaction). `apis`: those of
    RATEDISPATCH_CONFIG (ratedispatch/apis.py), each shown on its own besides `default`."""
    if apis is not None and DEFAULT in apis:
        settings = apis[DEFAULT].settings
    keys = Keys.from_settings(settings)
    # With a pool (tokens_env), the limits shown are its first credential's (`apis` has all).
    pool = apis[DEFAULT].pool_keys(keys) if apis is not None and DEFAULT in apis else []
    limiter = Limiter.from_settings(redis, pool[0] if pool else keys, settings)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(keys.stream)
        pipe.zcard(keys.retry)
        pipe.xlen(keys.dead)
        if keys.results:
            pipe.xlen(keys.results)
        replies = await pipe.execute()
    length, retrying, dead = replies[:3]
    results = int(replies[-1]) if keys.results else None
    waiting = await _waiting(redis, keys)
    group, consumers = await _group(redis, keys, settings.reclaim_idle_seconds)
    limits = await limiter.state()
    first = limits.terms[0]
    window = limits.window
    pending = int(group.get("pending", 0)) if group else 0
    lag = group.get("lag") if group else None
    in_flight = sum(c.pending for c in consumers)
    return Status(
        stream=keys.stream,
        group=keys.group,
        group_exists=group is not None,
        stream_length=int(length),
        not_delivered=int(lag) if lag is not None else (None if group else int(length)),
        pending=pending,
        waiting=waiting,
        retrying=int(retrying),
        in_flight=in_flight,
        dead_letters=int(dead),
        results=results,
        window_used=window.used if window else first.used,
        window_limit=window.limit if window else first.limit,
        window_resets_in=window.resets_in if window else None,
        slots_busy=first.used,
        slot_frees_in=first.frees_in,
        terms=limits.terms,
        calls_in_flight=limits.calls_in_flight,
        consumers=consumers,
        apis=[await _api(redis, api) for api in (apis or {}).values()],
        keys=await _keys(redis, keys, settings),
        announced=Announced.of(limits, limiter),
    )


async def _api(redis: Redis, api: Api) -> ApiStatus:
    keys = Keys.from_settings(api.settings, api.name)
    credentials = []
    for (variable, _), token_keys in zip(api.pool, api.pool_keys(keys), strict=True):
        limiter = Limiter.from_settings(redis, token_keys, api.settings)
        state = await limiter.state()
        credentials.append(
            CredentialStatus(
                variable, state.terms, state.calls_in_flight, Announced.of(state, limiter)
            )
        )
    if credentials:  # the API's own limits are not used: each credential's are
        terms = credentials[0].terms
        in_flight = sum(c.calls_in_flight for c in credentials)
        announced = credentials[0].announced
    else:
        limiter = Limiter.from_settings(redis, keys, api.settings)
        limits = await limiter.state()
        terms, in_flight = limits.terms, limits.calls_in_flight
        announced = Announced.of(limits, limiter)
    return ApiStatus(
        name=api.name,
        waiting=await _waiting(redis, keys),
        retrying=int(await redis.zcard(keys.retry)),
        terms=terms,
        calls_in_flight=in_flight,
        keys=await _keys(redis, keys, api.settings),
        credentials=credentials,
        announced=announced,
    )


async def _waiting(redis: Redis, keys: Keys) -> dict[str, int]:
    """The tasks waiting for a slot, by priority: in the index, and by key (queue/keyed.lua)."""
    async with redis.pipeline(transaction=False) as pipe:
        for rank in Priority:
            # All members score 0 and start with their rank digit: a lexical range counts a rank.
            pipe.zlexcount(keys.index, f"[{int(rank)}", f"({int(rank) + 1}")
        if keys.keyed is not None:
            pipe.hmget(keys.keyed_name("waiting"), [str(int(rank)) for rank in Priority])
        replies = await pipe.execute()
    by_rank = [int(n) for n in replies[: len(Priority)]]
    if keys.keyed is not None:
        # Counted by the scripts as tasks come and go: never below 0 after an operator's edit.
        by_rank = [n + max(0, int(k or 0)) for n, k in zip(by_rank, replies[-1], strict=True)]
    return {p.label: n for p, n in zip(Priority, by_rank, strict=True)}


async def _keys(redis: Redis, keys: Keys, settings: Settings) -> KeysStatus | None:
    if keys.keyed is None or settings.key_field is None:
        return None
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.keyed_name("backlog"))
        pipe.zcard(keys.keyed_name("sleeping"))
        pipe.zrevrange(keys.keyed_name("backlog"), 0, BUSIEST_KEYS - 1, withscores=True)
        active, sleeping, busiest = await pipe.execute()
    return KeysStatus(
        field=settings.key_field,
        waiting=int(active),
        without_room=int(sleeping),
        busiest=[KeyBacklog(_text(key), int(n)) for key, n in busiest],
    )


async def _group(
    redis: Redis, keys: Keys, reclaim_idle: float
) -> tuple[dict[str, Any] | None, list[Consumer]]:
    try:
        groups = await redis.xinfo_groups(keys.stream)
    except rexc.ResponseError:  # no such stream yet
        return None, []
    found = next((g for g in groups if _text(g["name"]) == keys.group), None)
    if found is None:
        return None, []
    rows = await redis.xinfo_consumers(keys.stream, keys.group)
    consumers = []
    for row in rows:
        name = _text(row["name"])
        if name == keys.waiting_consumer:
            continue
        idle = int(row.get("idle", 0)) / 1000
        held = int(row.get("pending", 0))
        consumers.append(Consumer(name, held, idle, held > 0 and idle > reclaim_idle))
    return dict(found), consumers


def _term_lines(terms: list[TermState], title: str = "limits") -> list[str]:
    """One line a term: `limits   600/1m  412/600 busy, the next frees in 3.2s`."""
    width = max((len(t.term) for t in terms), default=0)
    lines = []
    for index, term in enumerate(terms):
        line = f"{title if index == 0 else '':<8} {term.term:<{width}}  {term.used}/{term.limit}"
        line += " in flight" if term.term == IN_FLIGHT_TERM else " busy"
        if term.frees_in is not None:
            line += f", the next frees in {term.frees_in:.1f}s"
        lines.append(line)
    return lines


def _announced_lines(said: Announced) -> list[str]:
    """`the API 12 remain (of 20), reset in 1.4s; the fleet may start 9 more` and the quotas it
    carries; with adapt, the limits it found."""
    lines = []
    if said.api_remaining is not None or said.api_limit is not None:
        line = "the API "
        if said.api_remaining is not None:
            line += f"says {said.api_remaining} remain"
            if said.api_limit is not None:
                line += f" (of {said.api_limit})"
            if said.api_reset_in is not None:
                line += f", reset in {said.api_reset_in:.1f}s"
        else:
            line += f"states a quota of {said.api_limit}"
        if said.api_left is not None:
            line += f"; the fleet may start {max(said.api_left, 0)} more before then"
        if said.api_heard_ago is not None:
            line += f"  (heard {said.api_heard_ago:.1f}s ago)"
        lines.append(line)
    lines += _term_lines(said.api_terms, "carried")
    if said.adapt_factor is not None:
        if said.adapt_factor < 1:
            lines.append(
                f"adapt    limits at {said.adapt_factor:.2f} of LIMITS ({said.adapted_limits}): "
                "lowered after 429s, each window of success adds a call back"
            )
        else:
            lines.append("adapt    at LIMITS: no 429 has lowered them")
    return lines


def _key_lines(keys: KeysStatus) -> list[str]:
    """`keys     by tenant: 1204 with tasks waiting, 3 without room; busiest acme 5000, ...`."""
    line = (
        f"keys     by {keys.field}: {keys.waiting} with tasks waiting, "
        f"{keys.without_room} without room"
    )
    if keys.busiest:
        line += "; busiest " + ", ".join(f"{k.key!r} {k.waiting}" for k in keys.busiest)
    return [line]


def render(status: Status) -> str:
    """The readable table of `ratedispatch status`."""
    lines = [f"stream   {status.stream}  (group {status.group})"]
    if not status.group_exists:
        lines.append("         no consumer group yet: no worker has started on this stream")
    not_delivered = "?" if status.not_delivered is None else str(status.not_delivered)
    waiting = "  ".join(f"{p} {n}" for p, n in status.waiting.items())
    results = "disabled" if status.results is None else str(status.results)
    if status.window_resets_in is None:
        resets = "no window open"
    else:
        resets = f"resets in {status.window_resets_in:.1f}s"
    lines += [
        f"entries  {status.stream_length} in the stream, {not_delivered} not yet delivered",
        f"pending  {status.pending}: waiting for a slot ({waiting}), "
        f"{status.retrying} retrying later, {status.in_flight} held by workers",
        f"window   {status.window_used}/{status.window_limit} used, {resets}",
        *_term_lines(status.terms),
        *_announced_lines(status.announced),
        f"dead     {status.dead_letters} dead letters;  results {results}",
    ]
    if status.keys is not None and not status.apis:
        lines += _key_lines(status.keys)
    for api in status.apis:
        waiting = "  ".join(f"{p} {n}" for p, n in api.waiting.items())
        lines.append(f"api {api.name}  waiting for a slot ({waiting}), {api.retrying} retrying")
        if api.credentials:
            for credential in api.credentials:
                lines.append(f"  credential {credential.variable}")
                lines += ["    " + line for line in _term_lines(credential.terms)]
                lines += ["    " + line for line in _announced_lines(credential.announced)]
        else:
            lines += ["  " + line for line in _term_lines(api.terms)]
            lines += ["  " + line for line in _announced_lines(api.announced)]
        if api.keys is not None:
            lines += ["  " + line for line in _key_lines(api.keys)]
    if status.consumers:
        lines.append("consumers")
        width = max(len(c.name) for c in status.consumers)
        for c in sorted(status.consumers, key=lambda c: c.name):
            flag = "  LIKELY DEAD (idle past RECLAIM_IDLE_SECONDS)" if c.likely_dead else ""
            lines.append(
                f"  {c.name:<{width}}  {c.pending:>5} pending  idle {c.idle_seconds:8.1f}s{flag}"
            )
    else:
        lines.append("consumers none")
    return "\n".join(lines)
