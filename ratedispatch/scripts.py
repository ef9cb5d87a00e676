"""The Lua scripts shipped in `lua/`, with the shared preludes they need put in front."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def _read(name: str) -> str:
    return files("ratedispatch").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def source(name: str, *preludes: str) -> str:
    """The text of script `name` with `preludes` (e.g. "common", "window") prepended."""
    return "\n".join([*(_read(p) for p in preludes), _read(name)])
