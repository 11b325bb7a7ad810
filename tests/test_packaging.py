"""What ``pip install`` puts in site-packages: every featup package, and nothing with a generic name."""

from __future__ import annotations

import importlib
import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_library_package_in_the_tree_is_installed():
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "featup").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    listed = set(_setuptools()["packages"])
    assert on_disk - listed == set(), "add the new package to [tool.setuptools] packages in pyproject.toml"


def test_tasks_and_flows_install_under_names_no_other_project_uses():
    config = _setuptools()
    assert {"tasks", "flows"}.isdisjoint(config["packages"])
    assert config["package-dir"] == {"featup_tasks": "tasks", "featup_flows": "flows"}
    for name, folder in config["package-dir"].items():
        spec = importlib.util.find_spec(name)
        assert spec is not None and Path(spec.origin).parent == ROOT / folder


def test_the_console_script_points_at_an_importable_function():
    module, _, function = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["featup"].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


