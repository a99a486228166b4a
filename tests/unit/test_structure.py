"""The package's shape: layers import downwards only, no import cycles, small modules, a true module map."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "kserve-sdxl-container" / "kserve_diffusion"
# The data flow, bottom to top: a module may import its own layer and the layers below it, never above.
LAYERS = (
    "errors",
    "redact",
    "config",
    "media",
    "marks",
    "api",
    "outputs",
    "pipelines",
    "parallel",
    "runtime",
    "jobs",
    "server",
    "__main__",
)
LONG_MODULE_LINES = 300  # past this a module says at its top why it is one module


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path) for path in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """The package modules `path` imports (relative imports resolved; `from . import x` counts as x)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            submodules = {f"{module}.{alias.name}" for alias in node.names} & MODULES
            found.update(submodules or {module})
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in MODULES and name != _module_name(path)}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


GRAPH = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def test_layers_import_downwards_only() -> None:
    wrong = []
    for module, imported in GRAPH.items():
        layer = _layer(module)
        if layer in ("__init__", "testing"):
            continue
        for other in imported:
            other_layer = _layer(other)
            if other_layer == "testing" or (other_layer in LAYERS and LAYERS.index(other_layer) > LAYERS.index(layer)):
                wrong.append(f"{module} -> {other}")
    assert not wrong, "imports against the data flow: " + ", ".join(sorted(wrong))


def test_the_runtime_package_only_imports_libraries_it_names() -> None:
    """The testing package (tiny models) is for tests, the demo and benchmarks: nothing that serves imports it."""
    users = [module for module, imported in GRAPH.items() if any(_layer(o) == "testing" for o in imported)]
    assert all(_layer(module) == "testing" for module in users), users


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in GRAPH.get(module, ()):
            if state.get(other) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(other) :], other]))
            if other not in state:
                visit(other, [*path, other])
        state[module] = 2

    for module in GRAPH:
        if module not in state:
            visit(module, [module])


def test_long_modules_say_why() -> None:
    """A module over ~300 lines states at the top of its docstring why it stays one module."""
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        if len(lines) > LONG_MODULE_LINES:
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "one module because" in docstring, f"{path.relative_to(ROOT)}: {len(lines)} lines"


def test_module_map_matches_the_tree() -> None:
    """docs/development.md lists every module of the package and nothing that is not there."""
    text = (ROOT / "docs" / "development.md").read_text()
    block = text.split("<!-- module map -->", 2)[1]
    listed, folder = set(), ""
    for line in block.splitlines():
        heading = re.fullmatch(r"([\w/]+/)", line.strip())
        if heading and not line.startswith(" "):
            folder = heading[1]  # "config/": the indented names below are its modules
            continue
        module = re.match(r"^(\s*)([\w/]+\.py)\b", line)
        if module:
            listed.add((folder if module[1] else "") + module[2])
    actual = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"}
    assert listed == actual, (
        f"missing from the map: {sorted(actual - listed)}; not in the tree: {sorted(listed - actual)}"
    )
