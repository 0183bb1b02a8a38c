"""pyproject.toml declares what the package imports: at module level in the dependencies, inside
functions (imported when a feature is used) in the dependencies or an extra."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return _normal(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports() -> dict[str, set[str]]:
    """``{"module": top-level modules imported at module level, "function": inside functions}``
    over every file of the package, third-party modules only."""
    found: dict[str, set[str]] = {"module": set(), "function": set()}
    for path in (ROOT / "contrastive").rglob("*.py"):
        tree = ast.parse(path.read_text())
        inside = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "contrastive":
                    continue
                found["function" if id(node) in inside else "module"].add(top)
    return found


def _distributions(module: str) -> set[str]:
    return {_normal(d) for d in importlib.metadata.packages_distributions().get(module, [])}


def test_every_module_imported_at_module_level_is_a_dependency():
    declared = {_name(r) for r in PROJECT["dependencies"]}
    missing = {m for m in _imports()["module"] if not _distributions(m) & declared}
    assert not missing, f"imported at module level but not in dependencies: {sorted(missing)}"


def test_every_module_imported_on_use_is_a_dependency_or_an_extra():
    extras = PROJECT["optional-dependencies"]
    declared = {_name(r) for r in PROJECT["dependencies"]}
    declared |= {_name(r) for reqs in extras.values() for r in reqs if "contrastive" not in r}
    missing = {m for m in _imports()["function"] if not _distributions(m) & declared}
    assert not missing, f"imported but declared nowhere: {sorted(missing)}"


def test_numpy_pillow_and_yaml_are_declared_as_the_package_imports_them():
    declared = {_name(r) for r in PROJECT["dependencies"]}
    assert {"numpy", "pillow", "pyyaml"} <= declared
    assert {"numpy", "PIL", "yaml"} <= _imports()["module"] | _imports()["function"]


def test_faiss_and_the_loggers_are_extras_of_their_own_and_dev_installs_faiss():
    extras = PROJECT["optional-dependencies"]
    assert [_name(r) for r in extras["faiss"]] == ["faiss-cpu"]
    assert [_name(r) for r in extras["wandb"]] == ["wandb"]
    assert [_name(r) for r in extras["mlflow"]] == ["mlflow"]
    dev = " ".join(extras["dev"])
    assert "faiss" in re.search(r"contrastive\[([^\]]*)\]", dev).group(1).split(",")
    # What `similar` tells a user without faiss names the extra.
    assert "pip install 'contrastive[faiss]'" in (ROOT / "contrastive/explore.py").read_text()
