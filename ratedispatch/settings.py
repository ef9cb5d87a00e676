"""Every knob, validated once at start-up; nothing else reads the environment."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError
from .task import RESERVED
from .terms import Limits

ENV_PREFIX = "RATEDISPATCH_"
# A key_field names a field of the producer's own, not one that steers the call.
KEY_FIELD_RESERVED = RESERVED | {"api"}


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def mask_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and error lines: the one before the
    host, and a `password=` in the query (redis-py reads that too)."""
    parts = urlsplit(url)
    if parts.query:
        query = "&".join(
            "password=***" if pair.lower().startswith("password=") else pair
            for pair in parts.query.split("&")
        )
        parts = parts._replace(query=query)
    if parts.password is None:
        return urlunsplit(parts)
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def check_base_url(value: str | None) -> str | None:
    """An API's base URL, without a trailing slash; ValueError if it is not one."""
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError("expected a base URL without a query or fragment")
    return value.rstrip("/")


class Settings(BaseSettings):
    """The configuration of a worker and of the CLI (docs/reference.md, Settings)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
    )

    redis_url: str = "redis://localhost:6379/0"
    stream: str = Field("external:api:tasks:stream", min_length=1)
    group: str = Field("api-workers", min_length=1)
    consumer: str = Field(default_factory=_default_consumer, min_length=1)
    rate_key: str = Field("rate:external:api", min_length=1)
    # A take grants up to CONCURRENCY at once, each call needs a connection, and the slot log
    # holds a member per slot: the bounds are what is tested, not what Redis could hold.
    rate_limit: int = Field(100, ge=1, le=1_000_000)
    rate_window_seconds: float = Field(60.0, gt=0)
    # Every term an API publishes (terms.py), in place of RATE_LIMIT per RATE_WINDOW_SECONDS.
    limits: str | None = None
    max_in_flight: int = Field(0, ge=0, le=1_000_000)
    api_base_url: str | None = None
    api_token: SecretStr | None = None
    concurrency: int = Field(16, ge=1, le=10_000)
    http_timeout_seconds: float = Field(10.0, gt=0)
    http_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    max_attempts: int = Field(5, ge=1)
    reclaim_idle_seconds: float = Field(60.0, gt=0)
    dead_letter_stream: str = Field("external:api:tasks:dead:stream", min_length=1)
    results_stream: str = "external:api:results:stream"
    results_maxlen: int = Field(100_000, ge=1)
    delete_acked: bool = True
    max_body_bytes: int = Field(1_048_576, ge=0)
    metrics_port: int = Field(9108, ge=0, le=65_535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    # Beyond the first release's table (docs/reference.md): the retry schedule and the bound
    # of the priority index, past which the stream itself holds the backlog.
    retry_backoff_seconds: float = Field(1.0, gt=0)
    retry_backoff_max_seconds: float = Field(300.0, gt=0)
    max_waiting: int = Field(100_000, ge=1)
    # The TOML file that names more APIs (ratedispatch/apis.py); unset: the default API alone.
    config: Path | None = None
    # Many tenants (docs/configuration.md): the entry field whose value is a task's key, the
    # limits of each key, each key's share (TOML only), and a file of `key=token` lines.
    key_field: str | None = None
    key_limits: str | None = None
    key_weights: dict[str, float] = Field(default_factory=dict)
    tokens_file: Path | None = None
    # What the API's own rate-limit headers steer (CONTRACT §9, docs/configuration.md), and
    # whether 429s alone lower the fleet's limits.
    rate_headers: Literal["obey", "observe", "off"] = "obey"
    rate_adapt: bool = False

    @field_validator("log_level", "log_format", "http_transport", "rate_headers", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            return value.upper() if info.field_name == "log_level" else value.lower()
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("api_base_url")
    @classmethod
    def _api_base_url(cls, value: str | None) -> str | None:
        return check_base_url(value)

    @field_validator("limits", "key_limits")
    @classmethod
    def _limits(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return str(Limits.parse(value))

    @field_validator("key_field")
    @classmethod
    def check_key_field(cls, value: str | None) -> str | None:
        if value is not None and not 1 <= len(value) <= 64:
            raise ValueError("expected a field name of 1 to 64 characters")
        if value is not None and value in KEY_FIELD_RESERVED:
            raise ValueError(
                f"{value!r} is a field ratedispatch reads itself: name a field of your own "
                "(tenant_id, account, user_id)"
            )
        return value

    @field_validator("key_weights")
    @classmethod
    def check_key_weights(cls, value: dict[str, float]) -> dict[str, float]:
        for key, weight in value.items():
            if not (0 < weight <= 1_000_000):
                raise ValueError(f"the weight of key {key[:64]!r} must be above 0 and at most 1e6")
        return value

    @property
    def key_terms(self) -> Limits | None:
        """KEY_LIMITS' terms; None when unset."""
        return None if self.key_limits is None else Limits.parse(self.key_limits)

    @property
    def limit_terms(self) -> Limits:
        """The terms every call must find room in: LIMITS, or RATE_LIMIT per
        RATE_WINDOW_SECONDS."""
        if self.limits is not None:
            return Limits.parse(self.limits)
        return Limits.window(self.rate_limit, self.rate_window_seconds)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        replaced = {"rate_limit", "rate_window_seconds"} & self.model_fields_set
        if self.limits is not None and replaced:
            raise ValueError(
                f"{ENV_PREFIX}LIMITS replaces {ENV_PREFIX}RATE_LIMIT and "
                f"{ENV_PREFIX}RATE_WINDOW_SECONDS: set {ENV_PREFIX}"
                f"{sorted(replaced)[0].upper()} as a term of LIMITS instead (e.g. "
                f'LIMITS="100/1m, 10000/1d")'
            )
        keyed = {"key_limits", "key_weights", "tokens_file"} & self.model_fields_set
        if self.key_field is None and keyed:
            raise ValueError(
                f"{ENV_PREFIX}{sorted(keyed)[0].upper()} needs {ENV_PREFIX}KEY_FIELD: the entry "
                "field whose value is a task's key"
            )
        if self.reclaim_idle_seconds <= self.http_timeout_seconds:
            raise ValueError(
                f"{ENV_PREFIX}RECLAIM_IDLE_SECONDS={self.reclaim_idle_seconds:g} must exceed "
                f"{ENV_PREFIX}HTTP_TIMEOUT_SECONDS={self.http_timeout_seconds:g}, or a live "
                "worker's call could be taken over and made twice"
            )
        if self.retry_backoff_max_seconds < self.retry_backoff_seconds:
            raise ValueError(
                f"{ENV_PREFIX}RETRY_BACKOFF_MAX_SECONDS must be at least "
                f"{ENV_PREFIX}RETRY_BACKOFF_SECONDS"
            )
        return self

    def require_api(self) -> str:
        """The API base URL, which the worker cannot run without."""
        if self.api_base_url is None:
            raise ConfigError(
                f"{ENV_PREFIX}API_BASE_URL is not set: expected the API's base URL, "
                "e.g. https://api.example.com"
            )
        return self.api_base_url

    def described(self) -> dict[str, object]:
        """The effective settings for a start-up log line, secrets masked."""
        shown: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "***"
            elif name in ("redis_url", "api_base_url") and value is not None:
                value = mask_url(value)
            shown[name] = value
        return shown


def load_settings(**overrides: Any) -> Settings:
    """Settings from flags (overrides), then the environment, then `.env`; ConfigError if bad."""
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a ratedispatch setting (is it misspelt?)")
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    loc = error.get("loc") or ()
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:
        return message
    name = str(loc[0]).upper().removeprefix(ENV_PREFIX)
    variable = f"{ENV_PREFIX}{name}"
    if error.get("type") == "extra_forbidden":
        return f"{variable} is not a ratedispatch setting (is it misspelt?)"
    value = error.get("input")
    if name == "API_TOKEN":
        shown = "***"
    elif name == "REDIS_URL" and isinstance(value, str):
        shown = repr(mask_url(value))
    else:
        shown = repr(value)
    return f"{variable}={shown} is invalid: {_expected(message)}"


def _expected(message: str) -> str:
    # pydantic says "Input should be ..."; an operator reads "expected ...".
    for prefix in ("Input should be ", "input should be "):
        if message.startswith(prefix):
            return "expected " + message.removeprefix(prefix)
    return message
