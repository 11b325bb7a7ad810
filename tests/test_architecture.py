"""The layering of the tree: flows → tasks → featup → kernels, no arrow back, and no import circle.

Every ``import`` in featup/, tasks/ (installed as featup_tasks) and flows/ (featup_flows) is read with
``ast`` (imports inside functions included, ``if TYPE_CHECKING:`` blocks excluded: they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"featup": "featup", "tasks": "featup_tasks", "flows": "featup_flows"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """What module ``name`` imports: module names, or ``package.name`` where that names a module."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                    for _ in range(child.level - 1):
                        package = package.rsplit(".", 1)[0]
                    base = f"{package}.{base}" if base else package
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_tree_is_read():
    assert {"featup.store.writer", "featup_tasks.features", "featup_flows.precompute"} <= set(MODULES)
    assert "featup.store.spec" in IMPORTS["featup.store.writer"] or "featup.store._group" in IMPORTS[
        "featup.store.writer"]


def test_no_import_circle():
    graph = {name: {i for i in found if i in MODULES} for name, found in IMPORTS.items()}
    assert _cycles(graph) == []


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def test_the_library_never_imports_orchestration():
    back = {name: sorted(i for i in found if _top(i) in ("prefect", "prefect_dask", "prefect_redis",
                                                          "featup_tasks", "featup_flows"))
            for name, found in IMPORTS.items() if _top(name) == "featup"}
    assert {name: found for name, found in back.items() if found} == {}


def test_tasks_never_import_flows():
    back = {name: sorted(i for i in found if _top(i) == "featup_flows")
            for name, found in IMPORTS.items() if _top(name) == "featup_tasks"}
    assert {name: found for name, found in back.items() if found} == {}


def test_a_shard_writer_never_loads_dask_or_xarray(tmp_path):
    """Pipeline workers write shards without the read views' dependencies (only ``to_dask``/``to_xarray`` load them)."""
    code = f"""
import sys
import numpy as np
from featup.data.manifest import Manifest, ShardInfo
from featup.store import FeatureSpec, create_feature_store
import featup.pipeline
manifest = Manifest("d", [ShardInfo("s0.tar", 2, 1, ("a", "b"))], url={str(tmp_path / "manifest.json")!r})
spec = FeatureSpec(dataset="d", backbone="b", upsampler="u", channels=3, size=(4, 4), dtype="bfloat16")
store = create_feature_store({str(tmp_path / "store")!r}, spec, manifest)
with store.shard_writer(0) as writer:
    writer.write(["a", "b"], np.ones((2, 3, 4, 4), np.float32))
assert store.completed_shards() == [0]
print(sorted(m for m in ("dask", "xarray") if m in sys.modules))
store.to_xarray()
print(sorted(m for m in ("dask", "xarray") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "['dask', 'xarray']"], out
