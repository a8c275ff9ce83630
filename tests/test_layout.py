"""Repository layout rules: the direction of imports, and the one manifest file."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LPD_SRC = ROOT / "src" / "lpd"
# The core library must run in scripts, the CLI and dask workers with no GUI stack.
FORBIDDEN = {"qtpy", "napari", "magicgui", "superqt", "napari_lpd"}
FORBIDDEN_PREFIXES = ("PyQt", "PySide")


def imported_roots(source: str) -> set[str]:
    """Top-level names of the absolute imports in ``source``."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def is_forbidden(root: str) -> bool:
    return root in FORBIDDEN or root.startswith(FORBIDDEN_PREFIXES)


def test_imported_roots_sees_every_form() -> None:
    src = "import a.b\nfrom c.d import e\nfrom . import f\ndef g():\n    import PyQt6.QtCore\n"
    assert imported_roots(src) == {"a", "c", "PyQt6"}
    assert is_forbidden("PyQt6") and is_forbidden("napari_lpd") and not is_forbidden("numpy")


def test_lpd_never_imports_gui_or_plugin() -> None:
    files = sorted(LPD_SRC.rglob("*.py"))
    assert files, f"no python files under {LPD_SRC}"
    offenders = {
        str(path.relative_to(ROOT)): sorted(filter(is_forbidden, imported_roots(path.read_text())))
        for path in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_plugin_manifest_is_a_relative_link_to_the_root_manifest() -> None:
    link = ROOT / "napari_lpd" / "napari.yaml"
    if not link.is_symlink():
        pytest.fail(f"{link} must be a symlink to ../napari.yaml (one manifest, two places)")
    assert not os.path.isabs(os.readlink(link)), "an absolute link breaks in other checkouts"
    assert link.resolve() == (ROOT / "napari.yaml").resolve()
