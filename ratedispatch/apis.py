"""The APIs one fleet calls (docs/reference.md, "Many APIs"): `default` from the environment as
always, and more, or `default` overridden, from the TOML file that RATEDISPATCH_CONFIG names.

    [apis.github]
    base_url = "https://api.github.com"
    token_env = "GITHUB_TOKEN"
    limits = "5000/1h"

Each API gets its own Settings: the environment's, with what its table sets. Its quota is its
own: an API from the file names its `limits`, and its keys are named from its `rate_key` (by
default `<RATE_KEY>:<name>`), so that one hash tag there puts all of them in one Cluster slot.
Its token comes only from `token_env` or `token_file`: never from the file itself, and never from
RATEDISPATCH_API_TOKEN, so no credential reaches another API.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ConfigError
from .keys import POOL, Keys
from .settings import ENV_PREFIX, Settings, check_base_url, mask_url
from .task import MAX_KEY_LENGTH
from .terms import Limits

DEFAULT = "default"
# An API's name is an entry's `api` field, a metric label and part of key names: kept plain.
API_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
CONFIG_VARIABLE = f"{ENV_PREFIX}CONFIG"
# A name in tokens_env: an environment variable's, as a shell would accept it.
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# A token goes into a header as it is: whitespace or a control character inside is a mistake.
_UNSAFE_TOKEN = re.compile(r"[\x00-\x20\x7f]")


class ApiTable(BaseModel):
    """One `[apis.NAME]` table: every key optional; what it leaves out comes from the
    environment's settings (but a token, and for an API other than `default` its limits).
    Strict: TOML has types, and `max_attempts = true` or `max_in_flight = "7"` is a mistake."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    base_url: str | None = None
    token_env: str | None = Field(None, min_length=1)
    # A pool of the API's credentials: each its own copy of the limits (Api.pool).
    tokens_env: list[str] | None = Field(None, min_length=1, max_length=64)
    token_file: Path | None = Field(None, strict=False)  # TOML has no path type
    limits: str | None = None
    max_in_flight: int | None = Field(None, ge=0, le=1_000_000)
    # An integer number of seconds is a float too (strict mode would refuse `30`).
    http_timeout_seconds: float | None = Field(None, gt=0, strict=False)
    max_attempts: int | None = Field(None, ge=1)
    rate_key: str | None = Field(None, min_length=1)
    key_field: str | None = None
    key_limits: str | None = None
    key_weights: dict[str, float] | None = Field(None, strict=False)  # TOML's 2 is an int
    tokens_file: Path | None = Field(None, strict=False)
    rate_headers: Literal["obey", "observe", "off"] | None = None
    rate_adapt: bool | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return check_base_url(value)

    @field_validator("limits", "key_limits")
    @classmethod
    def _limits(cls, value: str | None) -> str | None:
        return None if value is None else str(Limits.parse(value))

    @field_validator("key_field")
    @classmethod
    def _key_field(cls, value: str | None) -> str | None:
        return Settings.check_key_field(value)

    @field_validator("tokens_env")
    @classmethod
    def _tokens_env(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if not _VARIABLE.fullmatch(name):
                raise ValueError(f"{name[:64]!r} is not an environment variable's name")
        if value is not None and len(set(value)) < len(value):
            raise ValueError("a variable is named twice")
        return value

    @field_validator("key_weights")
    @classmethod
    def _key_weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return None if value is None else Settings.check_key_weights(value)


class ConfigFile(BaseSettings):
    """The file: its `apis` tables, read by pydantic-settings' TOML source."""

    # Case-sensitive: else `[APIS.x]` and `[apis.y]` fold into one key and a table is lost.
    model_config = SettingsConfigDict(extra="forbid", frozen=True, case_sensitive=True)

    apis: dict[str, ApiTable] = Field(default_factory=dict)

    @field_validator("apis")
    @classmethod
    def _names(cls, apis: dict[str, ApiTable]) -> dict[str, ApiTable]:
        for name in apis:
            if not API_NAME.fullmatch(name):
                raise ValueError(
                    f"[apis.{name}] is not a valid API name: expected lower-case letters, digits, "
                    "'-' and '_', at most 63, starting with a letter or digit"
                )
        return apis


@dataclass(frozen=True, slots=True)
class Api:
    name: str
    settings: Settings  # the environment's, with what the API's table sets
    # tokens_file: each key's own token (a key without one uses the API's). Never shown.
    key_tokens: Mapping[str, str] = field(default_factory=dict, repr=False)
    # tokens_env: (variable, token) of each credential of the pool, each with its own copy of
    # the limits; empty without a pool. Never shown.
    pool: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def pool_keys(self, keys: Keys) -> list[Keys]:
        """The keys of each credential of the pool: the API's index and retries, the token's
        own limits beside its rate_key (`<rate_key>:pool.<variable>`)."""
        return [keys.with_limits(f"{keys.rate}:{POOL}{variable}") for variable, _ in self.pool]


def default_api(settings: Settings) -> Api:
    """The default API as the environment sets it, with its keys' tokens (TOKENS_FILE)."""
    tokens = {}
    if settings.tokens_file is not None:
        tokens = read_key_tokens(settings.tokens_file, f"{ENV_PREFIX}TOKENS_FILE")
    return Api(DEFAULT, settings, tokens)


def read_key_tokens(path: Path, where: str) -> dict[str, str]:
    """A tokens_file: `key=token` lines, spaces around either ignored (blank lines and `#`
    comments skipped). ConfigError, naming the line but never showing a token, if one is wrong."""
    at = f"{where}={str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{at}: cannot be read ({type(exc).__name__})") from None
    tokens: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, equals, token = line.partition("=")
        key, token = key.strip(), token.strip()
        if not equals or not token:
            raise ConfigError(f"{at} line {number}: expected key=token")
        if len(key) > MAX_KEY_LENGTH:
            raise ConfigError(f"{at} line {number}: the key is over {MAX_KEY_LENGTH} characters")
        if _UNSAFE_TOKEN.search(token):
            raise ConfigError(f"{at} line {number}: the token has spaces or control characters")
        if key in tokens:
            raise ConfigError(f"{at} line {number}: key {key[:64]!r} has a token already")
        tokens[key] = token
    return tokens


def read_config(path: Path) -> ConfigFile:
    """The file at `path`, validated; ConfigError (one line: the file, table and key) if bad."""
    where = f"{CONFIG_VARIABLE}={path}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file")

    class FromFile(ConfigFile):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (TomlConfigSettingsSource(settings_cls, toml_file=path),)  # the file only

    try:
        return FromFile()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot be read: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_one_line(exc)}") from None


def _one_line(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error.get("loc") or ()]
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if loc[:1] != ["apis"]:
        if error.get("type") == "extra_forbidden":
            return f"{'.'.join(loc)} is not a table this file may have (only [apis.NAME])"
        return message
    if len(loc) < 2:
        return f"apis: {message} (expected tables such as [apis.github])"
    if len(loc) < 3:
        return f"[apis.{loc[1]}]: {message}"
    table, key = f"[apis.{loc[1]}]", ".".join(loc[2:])
    if error.get("type") == "extra_forbidden":
        known = ", ".join(ApiTable.model_fields)
        return f"{table} {key}: not a key an API may have (known: {known})"
    value = error.get("input")
    if isinstance(value, str):
        value = mask_url(value)  # a base_url with a password in it
    return f"{table} {key}={value!r}: {message}"


def load_apis(
    settings: Settings,
    path: Path | None,
    environ: Mapping[str, str] = os.environ,
    *,
    tokens: bool = True,
) -> dict[str, Api]:
    """Every API, `default` first: from the environment's settings, and from the file at
    `path` (RATEDISPATCH_CONFIG) when there is one. ConfigError if anything is wrong.
    `tokens` False: leave them out (`status` reads no token, and may run where there are none)."""
    tables = read_config(path).apis if path is not None else {}
    where = f"{CONFIG_VARIABLE}={path}"
    environ = environ if tokens else {}
    base = path.parent if path is not None else Path()
    apis = {}
    for name in (DEFAULT, *(n for n in tables if n != DEFAULT)):
        table = tables.get(name)
        if table is not None and not tokens:
            # `status` reads no token (a pool's credentials are shown by their variables only).
            table = table.model_copy(
                update={"token_env": None, "token_file": None, "tokens_file": None}
            )
        resolved = _resolve(settings, name, table, where, environ, base)
        key_tokens = {}
        if tokens and resolved.tokens_file is not None:
            from_file = table is not None and table.tokens_file is not None
            key_tokens = read_key_tokens(
                resolved.tokens_file,
                f"{where}: [apis.{name}] tokens_file" if from_file else f"{ENV_PREFIX}TOKENS_FILE",
            )
        pool = _pool(table, f"{where}: [apis.{name}]", environ if tokens else None)
        if pool and resolved.tokens_file is not None:  # its own, or the environment's
            raise ConfigError(
                f"{where}: [apis.{name}] has a pool (tokens_env) and a tokens_file: a key's own "
                "token would be spent in a pool credential's limits; choose one"
            )
        apis[name] = Api(name, resolved, key_tokens, pool)
    owner: dict[str, str] = {}
    for api in apis.values():
        keys = Keys.from_settings(api.settings, api.name)
        names = [keys.rate, keys.flight, keys.terms, keys.index, keys.retry]
        for token in api.pool_keys(keys):
            names += [token.rate, token.flight, token.terms]
        for key in names:
            other = owner.setdefault(key, api.name)
            if other != api.name:
                raise ConfigError(
                    f"{where}: [apis.{api.name}] its key {key!r} is also a key of "
                    f"[apis.{other}]: each API's keys are its own (set its rate_key)"
                )
    return apis


def _resolve(
    settings: Settings,
    name: str,
    table: ApiTable | None,
    where: str,
    environ: Mapping[str, str],
    base: Path,
) -> Settings:
    if table is None:
        return settings
    at = f"{where}: [apis.{name}]"
    given = [k for k in ("token_env", "token_file", "tokens_env") if getattr(table, k) is not None]
    if len(given) > 1:
        raise ConfigError(f"{at} sets both {given[0]} and {given[1]}: choose one")
    update: dict[str, Any] = {
        field: value
        for field, value in (
            ("max_in_flight", table.max_in_flight),
            ("http_timeout_seconds", table.http_timeout_seconds),
            ("max_attempts", table.max_attempts),
            ("key_field", table.key_field),
            ("key_limits", table.key_limits),
            ("key_weights", table.key_weights),
            ("rate_headers", table.rate_headers),
            ("rate_adapt", table.rate_adapt),
        )
        if value is not None
    }
    if name == DEFAULT:
        if table.base_url is not None:
            update["api_base_url"] = table.base_url
        if table.rate_key is not None:
            update["rate_key"] = table.rate_key
    else:
        if table.base_url is None:
            raise ConfigError(f"{at} has no base_url: every API other than default needs one")
        if table.limits is None:
            raise ConfigError(
                f'{at} has no limits: an API\'s quota is its own (e.g. limits = "5000/1h")'
            )
        update["api_base_url"] = table.base_url
        update["rate_key"] = table.rate_key or f"{settings.rate_key}:{name}"
        update["api_token"] = None  # never the environment's API_TOKEN
        # The environment's keys are the default API's entries' own: none of them is inherited.
        update.setdefault("key_field", None)
        update.setdefault("key_limits", None)
        update.setdefault("key_weights", {})
    if table.limits is not None:
        update["limits"] = table.limits
    key_field = update.get("key_field", settings.key_field if name == DEFAULT else None)
    for setting in ("key_limits", "key_weights", "tokens_file"):
        if getattr(table, setting) is not None and key_field is None:
            raise ConfigError(f"{at} sets {setting} but no key_field: whose key would it be?")
    if table.tokens_file is not None:
        update["tokens_file"] = base / table.tokens_file
    elif name != DEFAULT:
        update["tokens_file"] = None  # never the default API's keys' tokens
    token = _token(table, at, environ, base)
    if token is not None:
        update["api_token"] = SecretStr(token)
    timeout = update.get("http_timeout_seconds", settings.http_timeout_seconds)
    if settings.reclaim_idle_seconds <= timeout:
        raise ConfigError(
            f"{at} http_timeout_seconds={timeout:g} must be below "
            f"{ENV_PREFIX}RECLAIM_IDLE_SECONDS={settings.reclaim_idle_seconds:g}, or a live "
            "worker's call could be taken over and made twice"
        )
    return settings.model_copy(update=update)


def _pool(
    table: ApiTable | None, at: str, environ: Mapping[str, str] | None
) -> tuple[tuple[str, str], ...]:
    """The pool's (variable, token) pairs; without `environ`, the variables with no token."""
    if table is None or table.tokens_env is None:
        return ()
    pool = []
    for variable in table.tokens_env:
        token = ""
        if environ is not None:
            token = environ.get(variable, "").strip()
            where = f"{at} tokens_env: {variable!r}"
            if not token:
                raise ConfigError(f"{where}: that variable is not set")
            if _UNSAFE_TOKEN.search(token):
                raise ConfigError(
                    f"{where}: the token has spaces, line breaks or control characters"
                )
        pool.append((variable, token))
    return tuple(pool)


def _token(table: ApiTable, at: str, environ: Mapping[str, str], base: Path) -> str | None:
    """The API's token, never shown: from its variable, or its file (a relative path is the
    config file's directory's)."""
    if table.token_env is not None:
        where, token = f"token_env={table.token_env!r}", environ.get(table.token_env, "").strip()
        if not token:
            raise ConfigError(f"{at} {where}: that variable is not set")
    elif table.token_file is not None:
        path = base / table.token_file
        where = f"token_file={str(path)!r}"
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{at} {where}: cannot be read ({type(exc).__name__})") from None
        if not token:
            raise ConfigError(f"{at} {where}: the file is empty")
    else:
        return None
    if _UNSAFE_TOKEN.search(token):
        # It would make every request invalid, and the error would carry it into logs.
        raise ConfigError(f"{at} {where}: the token has spaces, line breaks or control characters")
    return token
