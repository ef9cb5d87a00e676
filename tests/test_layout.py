"""The package reads top-down: data flows one way, and no module imports one above it.

cli -> devtools -> worker -> ops -> queue -> limits -> the base modules (settings, task, keys,
scripts, connection, guard...). ops sits below worker because a worker's gauges read `status`.
"""

from __future__ import annotations

import ast
from importlib.resources import files
from pathlib import Path

PACKAGE = Path(str(files("ratedispatch")))
LAYERS = ["base", "limits", "queue", "ops", "worker", "devtools", "cli", "surface"]


def layer(module: str) -> int:
    """`worker.calls` -> the worker layer; `settings` -> base; `__init__` -> the surface."""
    top = module.split(".")[0]
    if top in ("__init__", "__main__"):
        return LAYERS.index("surface")
    if top in LAYERS:
        return LAYERS.index(top)
    return LAYERS.index("base")


def imports(root: Path, path: Path) -> list[str]:
    """The modules of the package at `root` that `path` imports, as dotted names under it."""
    here = path.relative_to(root).with_suffix("").parts
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = list(here[: len(here) - node.level])
        elif (node.module or "").split(".")[0] == root.name:
            base, node.level = [], 1
            node.module = node.module.removeprefix(root.name).lstrip(".") if node.module else None
        else:
            continue
        if node.module:
            found.append(".".join([*base, *node.module.split(".")]))
            continue
        for alias in node.names:  # from .. import scripts: a module, or a name of the package
            name = [*base, alias.name]
            is_module = (
                root.joinpath(*name).with_suffix(".py").exists() or root.joinpath(*name).is_dir()
            )
            found.append(".".join(name) if is_module else ".".join([*base, "__init__"]))
    return found


def upward_imports(root: Path) -> list[str]:
    upward = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        for imported in imports(root, path):
            if layer(imported) > layer(module):
                upward.append(f"{module} imports {imported}")
    return upward


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert upward_imports(PACKAGE) == []


def test_the_layers_are_the_packages_there_are() -> None:
    packages = {p.parent.name for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE}
    assert packages == set(LAYERS) - {"base", "cli", "surface"}


def test_an_import_from_a_layer_above_is_found(tmp_path: Path) -> None:
    root = tmp_path / "ratedispatch"
    (root / "worker").mkdir(parents=True)
    (root / "__init__.py").write_text("__version__ = '1'\n")
    (root / "worker" / "__init__.py").write_text("")
    (root / "worker" / "calls.py").write_text("from ..settings import Settings\n")
    (root / "settings.py").write_text("from .worker.calls import Caller\n")
    (root / "cli.py").write_text("from . import __version__\n")
    (root / "task.py").write_text("from ratedispatch.worker import calls\n")
    assert upward_imports(root) == [
        "cli imports __init__",
        "settings imports worker.calls",
        "task imports worker",
    ]
