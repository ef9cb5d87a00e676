"""The Lua scripts: each one's includes resolved, its inputs named, its errors located.

A script is a `.lua` file beside the Python that runs it. Its header names every input, one a
line, and says what it includes:

    -- KEYS[1] stream: the task stream
    -- ARGV[1] group: the consumer group
    -- ARGV[2..] ids: entry ids
    -- include: queue/held.lua

Includes are paths under the package, resolved once each, in the order met, before the script's
own text: Redis runs one text, and a function must be defined before the code that calls it. The
Python side passes a frozen dataclass for KEYS and one for ARGV whose fields are those names, in
that order (a test holds the two together); a last field that is a sequence fills the `..` tail.
An error in a script names the file and line it happened on, not the assembled text's line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any, Generic, TypeVar

from redis import exceptions as rexc
from redis.asyncio import Redis

PACKAGE = "ratedispatch"
_INCLUDE = re.compile(r"--\s*include:\s*(\S+)\s*")
_INPUT = re.compile(r"--\s*(KEYS|ARGV)\[(\d+)(\.\.)?\]\s+(\w+):")
# Where Redis says a script failed (`user_script:12`); the embedded fakeredis says it as Lua
# does (`[string "<python>"]:12`, after a `@user_script:?:` that names no line).
_SCRIPT_LINE = re.compile(r'user_script:(\d+)|\[string "[^"]*"\]:(\d+)')
_NO_LINE = re.compile(r"@user_script:\?: ")

K = TypeVar("K")
A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class Input:
    """One input a script's header declares: `ARGV[3] want`, or `ARGV[11..] fresh` (the tail)."""

    index: int
    name: str
    tail: bool = False


@dataclass(frozen=True, slots=True)
class Source:
    path: str  # under the package, e.g. "queue/take.lua"
    text: str  # the script with its includes in front, as Redis runs it
    # The file and line of each line of `text`, to name where an error happened.
    origins: tuple[tuple[str, int], ...]
    keys: tuple[Input, ...]
    argv: tuple[Input, ...]

    def locate(self, line: int) -> str:
        """`queue/take.lua:12` for line `line` of the assembled text."""
        if 1 <= line <= len(self.origins):
            path, own = self.origins[line - 1]
            return f"{path}:{own}"
        return f"{self.path}:?"


@cache
def _read(path: str) -> str:
    return files(PACKAGE).joinpath(path).read_text(encoding="utf-8")


@cache
def load(path: str) -> Source:
    """The script at `path` (under the package), its includes resolved."""
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in chain:
            raise ValueError(f"{name} includes itself through {' -> '.join(chain)}")
        if name in order:
            return
        for line in _read(name).splitlines():
            match = _INCLUDE.fullmatch(line)
            if match:
                visit(match.group(1), (*chain, name))
        order.append(name)

    visit(path, ())
    lines: list[str] = []
    origins: list[tuple[str, int]] = []
    for name in order:
        for number, line in enumerate(_read(name).splitlines(), 1):
            lines.append(line)
            origins.append((name, number))
    own = _read(path).splitlines()
    return Source(
        path,
        "\n".join(lines),
        tuple(origins),
        _inputs(own, "KEYS"),
        _inputs(own, "ARGV"),
    )


def _inputs(lines: Sequence[str], table: str) -> tuple[Input, ...]:
    found = []
    for line in lines:
        match = _INPUT.match(line)
        if match and match.group(1) == table:
            found.append(Input(int(match.group(2)), match.group(4), match.group(3) is not None))
    return tuple(found)


def flatten(values: Any) -> list[Any]:
    """A KEYS or ARGV dataclass as the list Redis takes: fields in order, a bool as 1 or 0, the
    last field spread when it is a sequence (of values, or of tuples of values)."""
    flat: list[Any] = []
    for field in dataclasses.fields(values):
        value = getattr(values, field.name)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            flat.append(_scalar(value))
            continue
        for item in value:
            if isinstance(item, tuple):
                flat.extend(_scalar(v) for v in item)
            else:
                flat.append(_scalar(item))
    return flat


def _scalar(value: Any) -> str | int | float:
    if isinstance(value, bool):
        return 1 if value else 0
    if isinstance(value, (str, int, float)):
        return value
    raise TypeError(f"a script input must be text or a number, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Declared(Generic[K, A]):
    """A script and the types of its inputs: `on(redis)` makes it callable."""

    path: str
    keys: type[K]
    args: type[A]

    def on(self, redis: Redis) -> Script[K, A]:
        return Script(redis, self.path)


DECLARED: list[Declared[Any, Any]] = []  # every script the package runs, for the tests


def declare(path: str, keys: type[K], args: type[A]) -> Declared[K, A]:
    declared = Declared(path, keys, args)
    DECLARED.append(declared)
    return declared


class ScriptError(rexc.ResponseError):
    """An error raised inside a script, with the file and line it happened on."""


class Script(Generic[K, A]):
    """A script registered on one client (redis-py reloads it after a NOSCRIPT)."""

    def __init__(self, redis: Redis, path: str) -> None:
        self.source = load(path)
        self._script = redis.register_script(self.source.text)

    async def __call__(self, keys: K, args: A) -> Any:
        try:
            return await self._script(keys=flatten(keys), args=flatten(args))
        except rexc.ResponseError as exc:
            raise self._located(exc) from None

    def _located(self, exc: rexc.ResponseError) -> rexc.ResponseError:
        message = str(exc)
        if _SCRIPT_LINE.search(message) is None:
            return exc  # Redis refused the script before running it (BUSY, NOSCRIPT...)
        text = _SCRIPT_LINE.sub(
            lambda m: self.source.locate(int(m.group(1) or m.group(2))), _NO_LINE.sub("", message)
        )
        text = f"{text} (in {self.source.path})"
        if type(exc) is rexc.ResponseError:
            return ScriptError(text)
        # A command in it was refused (OOM at its first write, say): the kind of error stays.
        return type(exc)(text)
