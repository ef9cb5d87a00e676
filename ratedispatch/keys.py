"""Every Redis key and group name ratedispatch uses, derived from the settings in one place."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .settings import Settings

# Where an API's keys keep their tasks, turns and limits (queue/keyed.lua), after `<rate_key>:`:
# an API's name has no '.', so no other API's key can start so.
KEYED = "keyed."
# Where each credential of an API's pool keeps its limits, after `<rate_key>:` (Api.pool_keys).
POOL = "pool."


def key_prefix(stream: str) -> str:
    """`external:api:tasks:stream` -> `external:api:tasks:`, the home of the helper keys."""
    return stream.removesuffix("stream") if stream.endswith(":stream") else f"{stream}:"


@dataclass(frozen=True, slots=True)
class Keys:
    stream: str
    group: str
    rate: str  # the fixed-window counter of the first N/D term (limits/counter.lua)
    flight: str  # sorted set: the calls in flight across the fleet (limits/flight.lua)
    terms: str  # hash: the state of every limit term (limits/limits.lua)
    dead: str
    results: str | None  # None: results are disabled
    # The priority index: a sorted set of the tasks waiting for a slot, by priority then id.
    # Its key ends in `deferred`, the name it has had since the first release.
    index: str
    retry: str  # the retry index: tasks waiting out their backoff, by due time (Redis ms)
    waiting_consumer: str  # the group consumer that holds every indexed entry
    # With a key_field: the prefix of the keys' indexes, limits and turns (queue/keyed.lua).
    keyed: str | None = None
    # Where they are (or were, before the API lost its key_field): `<rate_key>:keyed.` of the
    # API's own RATE_KEY, also for a pool's credential, whose limits are elsewhere.
    keyed_home: str = ""

    @classmethod
    def from_settings(cls, settings: Settings, api: str = "default") -> Keys:
        """The keys of API `api` (ratedispatch/apis.py), whose settings are `settings`: the
        default API's are the names it has always had; another's index and retry index are
        named from its RATE_KEY, like its limits, so one hash tag there keeps them together."""
        prefix = key_prefix(settings.stream) if api == "default" else f"{settings.rate_key}:"
        return cls(
            stream=settings.stream,
            group=settings.group,
            rate=settings.rate_key,
            # Beside the counter, not under the stream's prefix: streams that share a RATE_KEY
            # share one quota, so they must share its terms and calls in flight too.
            flight=f"{settings.rate_key}:flight",
            terms=f"{settings.rate_key}:terms",
            dead=settings.dead_letter_stream,
            results=settings.results_stream or None,
            index=f"{prefix}deferred",
            retry=f"{prefix}retry",
            waiting_consumer="ratedispatch:waiting",
            keyed=f"{settings.rate_key}:{KEYED}" if settings.key_field else None,
            keyed_home=f"{settings.rate_key}:{KEYED}",
        )

    def with_limits(self, rate: str) -> Keys:
        """These keys with limits of their own at `rate` (and beside it): a pool's credential."""
        return replace(self, rate=rate, flight=f"{rate}:flight", terms=f"{rate}:terms")

    def key_terms(self, key: str) -> str:
        """Key `key`'s limits' state (queue/keyed.lua: keyed_terms)."""
        return self.keyed_name(f"key:{key}:terms")

    def keyed_name(self, name: str) -> str:
        """`ready:0`, `backlog`, ... under the keyed prefix (queue/keyed.lua names them)."""
        if self.keyed is None:
            raise ValueError("this API has no key_field")
        return self.keyed + name
