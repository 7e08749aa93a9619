"""The package's shape: library subpackages around the Kedro app, the library never imports Kedro or the
app, and no module import loop.

The import graph is read from the source (every ``import`` statement, at any depth, type-only ones
included: a loop drawn only for the type checker is still a loop a reader has to untangle).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "starft_pipeline"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE
#: The Kedro application around the library: settings, hooks, the registry, the parameter models,
#: dataset classes, the pipelines and the command-line entry points that drive Kedro sessions. Every
#: top-level module of the package belongs to it.
APP_MODULES = (
    "__main__",
    "cli",
    "settings",
    "hooks",
    "pipeline_registry",
    "params",
    "kedro_io",
    "methods_table",
    "study",
    "gradient_norms",
    "pipelines",
)
#: The Kedro-free library: these subpackages (``core`` holds what every area shares).
LIBRARY_PACKAGES = ("core", "data", "models", "train", "evaluate", "llm")
KEDRO_PACKAGES = ("kedro", "kedro_datasets", "kedro_mlflow", "kedro_viz")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE, *parts])


def is_app(module: str) -> bool:
    relative = module.removeprefix(PACKAGE).lstrip(".")
    return relative.split(".")[0] in APP_MODULES


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(path: Path) -> Iterator[str]:
    """Every module ``path`` imports (``from x import y`` yields ``x.y`` when that is a module of ours)."""
    module = module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node, path.name == "__init__.py")
            yield target
            for alias in node.names:
                yield f"{target}.{alias.name}"


def package_graph() -> dict[str, set[str]]:
    """Our modules → our modules they import (names that are not modules of ours are dropped)."""
    paths = sorted(SOURCE.rglob("*.py"))
    ours = {module_name(path) for path in paths}
    return {
        module_name(path): {name for name in imported_modules(path) if name in ours} - {module_name(path)}
        for path in paths
    }


def kedro_imports() -> dict[str, list[str]]:
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        names = [name for name in imported_modules(path) if name.split(".")[0] in KEDRO_PACKAGES]
        if names:
            found[module_name(path)] = sorted(set(names))
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop (a list of modules, first == last), or None. Packages' ``__init__`` re-exports
    of their own submodules are not loops."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target.startswith(node + "."):  # a package importing its own submodule
                continue
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_top_level_is_the_app_and_the_library_is_in_subpackages():
    top_modules = {path.stem for path in SOURCE.glob("*.py")} - {"__init__"}
    packages = {path.parent.name for path in SOURCE.glob("*/__init__.py")}
    assert top_modules <= set(APP_MODULES), (
        f"flat modules beside the Kedro app: {sorted(top_modules - set(APP_MODULES))}; move them into a "
        f"library subpackage {LIBRARY_PACKAGES} (or add them to APP_MODULES if they drive Kedro)"
    )
    assert packages == {*LIBRARY_PACKAGES, "pipelines"}


def test_the_library_never_imports_kedro():
    offenders = {module: names for module, names in kedro_imports().items() if not is_app(module)}
    assert not offenders, f"library modules import Kedro (move the Kedro part into the app): {offenders}"


def test_the_library_never_imports_the_app():
    graph = package_graph()
    upward = {
        module: sorted(t for t in targets if is_app(t)) for module, targets in graph.items() if not is_app(module)
    }
    upward = {module: targets for module, targets in upward.items() if targets}
    assert not upward, f"library modules import the Kedro app: {upward}"


def test_no_import_loop():
    cycle = find_cycle(package_graph())
    assert cycle is None, "import loop: " + " → ".join(cycle or [])


def area_graph() -> dict[str, set[str]]:
    """The library's subpackages and which others each imports (the picture a newcomer reads)."""
    areas: dict[str, set[str]] = {area: set() for area in LIBRARY_PACKAGES}
    for module, targets in package_graph().items():
        source = module.split(".")[1] if module.count(".") >= 1 else ""
        for target in targets:
            area = target.split(".")[1] if target.count(".") >= 1 else ""
            if source in areas and area in areas and area != source:
                areas[source].add(area)
    return areas


def test_the_library_areas_import_each_other_in_one_direction():
    # core <- data <- models <- train <- evaluate (llm on core): no loop between areas either
    graph = area_graph()
    assert find_cycle(graph) is None, f"the library's areas import each other in a loop: {graph}"
    assert graph["core"] == set(), f"core imports other areas: {graph['core']}"


@pytest.mark.parametrize(
    ("graph", "has_cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"a"}}, True),
        ({"p": {"p.x"}, "p.x": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ],
)
def test_find_cycle_on_small_graphs(graph, has_cycle):
    assert (find_cycle(graph) is not None) == has_cycle


def test_the_graph_sees_absolute_and_relative_imports(tmp_path, monkeypatch):
    graph = package_graph()
    assert f"{PACKAGE}.train.losses" in graph[f"{PACKAGE}.train.finetune"]
    assert f"{PACKAGE}.train.engine" in graph[f"{PACKAGE}.train.finetune"]  # from ….train.engine import (…)
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "__init__.py").write_text("from .a import x\n")
    (package / "sub" / "a.py").write_text("from ..b import y\nfrom . import c\n")
    monkeypatch.setattr(sys.modules[__name__], "SOURCE", package)
    assert set(imported_modules(package / "sub" / "a.py")) >= {f"{PACKAGE}.b", f"{PACKAGE}.sub.c"}
    assert f"{PACKAGE}.sub.a" in set(imported_modules(package / "sub" / "__init__.py"))
