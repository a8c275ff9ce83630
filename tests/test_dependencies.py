"""Every third-party package the code imports is declared in pyproject.toml: the core's in
``dependencies``, the plugin's there or in the ``napari`` extra."""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]
OWN = {"lpd", "napari_lpd"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings (extras and versions dropped)."""
    return {_canonical(re.match(r"[A-Za-z0-9_.-]+", r.strip()).group(0)) for r in requirements}


def _third_party_imports(folder: Path) -> dict[str, set[str]]:
    """Top-level module -> files importing it (absolute imports, anywhere in a file)."""
    import ast

    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _undeclared(folder: Path, declared: set[str]) -> dict[str, list[str]]:
    dists = md.packages_distributions()
    missing = {}
    for top, files in _third_party_imports(folder).items():
        names = {_canonical(d) for d in dists.get(top, [])}
        if not names & declared:
            missing[f"{top} ({', '.join(sorted(names)) or 'not installed'})"] = sorted(files)
    return missing


def test_every_import_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = _declared(project["dependencies"])
    plugin = core | _declared(project["optional-dependencies"]["napari"])
    assert _undeclared(ROOT / "src" / "lpd", core) == {}
    assert _undeclared(ROOT / "napari_lpd", plugin) == {}
