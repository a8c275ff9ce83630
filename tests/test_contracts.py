"""The architecture's contracts, read from the source (no import is run, no network):

1. ``lpd`` never imports GUI code (qtpy, napari, magicgui, superqt, PyQt*, PySide*) nor
   the plugin (``napari_lpd``): the core runs in scripts, the CLI and dask workers.
2. No module of ``napari_lpd/widgets/`` imports another module of ``napari_lpd/widgets/``:
   widgets share state through the plugin's session, not through each other.
3. A private module (a name starting with ``_``, e.g. ``lpd.infer._plan``) is imported only
   from inside its own package (``lpd.infer.*`` for ``lpd.infer._plan``; ``lpd.*`` for
   ``lpd._atomic``); other packages use the package's public modules. Tests are exempt.
4. ``lpd.data`` never imports ``lpd.infer``: training data sits below inference. Slide
   access (``lpd.wsi``) sits below both: it imports none of ``WSI_FORBIDDEN``.
5. Only the orchestrator (``lpd.segmentation``) and ``lpd.infer`` itself import
   ``lpd.infer.tiled``, plus the allow-list ``TILED_ALLOWED`` (the benchmarks, which time
   tiled inference itself). Everything else runs a job through ``lpd.segmentation``.
6. No function in ``src/`` or ``napari_lpd/`` is longer than ``MAX_FUNCTION_LINES`` lines,
   counted from its ``def`` line to its last line, minus its docstring's lines (decorators
   not counted; a nested function counts in its own right and inside its parent).

Every import statement counts, also inside functions and ``if TYPE_CHECKING:`` blocks.
``from a import b`` imports the module ``a.b`` when that module exists, else ``a``. Each
test fails with the list of its violations (``file:line: ...``) and prints nothing."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"lpd": ROOT / "src" / "lpd", "napari_lpd": ROOT / "napari_lpd"}
GUI = {"qtpy", "napari", "magicgui", "superqt", "napari_lpd"}
GUI_PREFIXES = ("PyQt", "PySide")
WIDGETS = "napari_lpd.widgets"
WSI = "lpd.wsi"
WSI_FORBIDDEN = ("lpd.data", "lpd.infer", "lpd.io", "lpd.model", "lpd.segmentation",
                 "lpd.training", "lpd.trainer", "lpd.bench", "lpd.cli")
TILED = "lpd.infer.tiled"
# besides lpd.segmentation and lpd.infer.*: modules that may import lpd.infer.tiled
TILED_ALLOWED = ("lpd.bench.",)  # benchmarks time tiled inference itself
MAX_FUNCTION_LINES = 80


@dataclass(frozen=True)
class Import:
    importer: str  # module name, e.g. "lpd.infer.tiled"
    imported: str  # module name (resolved), e.g. "lpd.infer._plan"
    where: str  # "path:line"


def module_name(path: Path, root: Path, package: str) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the two packages, by name."""
    out = {}
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            out[module_name(path, root, package)] = path
    return out


def imports_of(source: str, importer: str, is_package: bool, known: set[str],
               where: str = "") -> Iterator[tuple[str, int]]:
    """(module, line) of each import in ``source``, resolved against ``known`` modules."""
    package = importer if is_package else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in known else base), node.lineno


@cache
def all_imports() -> tuple[Import, ...]:
    known = set(modules())
    out = []
    for name, path in modules().items():
        rel = path.relative_to(ROOT)
        for imported, line in imports_of(path.read_text(encoding="utf-8"), name,
                                         path.name == "__init__.py", known):
            out.append(Import(name, imported, f"{rel}:{line}"))
    return tuple(dict.fromkeys(out))  # one per module a line imports


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def fail_with(title: str, violations: list[str]) -> None:
    if violations:
        pytest.fail(f"{title} ({len(violations)}):\n  " + "\n  ".join(sorted(violations)),
                    pytrace=False)


# ---- the rules ---------------------------------------------------------------------------
def gui_violations(imports: tuple[Import, ...]) -> list[str]:
    return [f"{i.where}: {i.importer} imports {i.imported}" for i in imports
            if inside(i.importer, "lpd")
            and (i.imported.split(".")[0] in GUI or i.imported.startswith(GUI_PREFIXES))]


def widget_violations(imports: tuple[Import, ...]) -> list[str]:
    return [f"{i.where}: {i.importer} imports {i.imported}" for i in imports
            if inside(i.importer, WIDGETS) and inside(i.imported, WIDGETS)
            and i.imported != i.importer]


def private_owner(module: str) -> str | None:
    """The package a private module belongs to (None: the module is public)."""
    parts = module.split(".")
    for k, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:k])
    return None


def private_violations(imports: tuple[Import, ...]) -> list[str]:
    out = []
    for i in imports:
        owner = private_owner(i.imported)
        if owner is not None and not inside(i.importer, owner):
            out.append(f"{i.where}: {i.importer} imports {i.imported} (private to {owner})")
    return out


def data_violations(imports: tuple[Import, ...]) -> list[str]:
    return [f"{i.where}: {i.importer} imports {i.imported}" for i in imports
            if inside(i.importer, "lpd.data") and inside(i.imported, "lpd.infer")]


def wsi_violations(imports: tuple[Import, ...]) -> list[str]:
    return [f"{i.where}: {i.importer} imports {i.imported} (slide access sits below it)"
            for i in imports if inside(i.importer, WSI)
            and any(inside(i.imported, p) for p in WSI_FORBIDDEN)]


def tiled_violations(imports: tuple[Import, ...]) -> list[str]:
    return [f"{i.where}: {i.importer} imports {i.imported} (use lpd.segmentation)"
            for i in imports
            if inside(i.imported, TILED) and i.importer != "lpd.segmentation"
            and not inside(i.importer, "lpd.infer") and not i.importer.startswith(TILED_ALLOWED)]


def function_lengths(source: str) -> Iterator[tuple[str, int, int]]:
    """(name, line, length) of every function: ``def`` line to last line, minus the
    docstring's lines."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                length -= first.end_lineno - first.lineno + 1  # type: ignore[operator]
            yield node.name, node.lineno, length


def length_violations() -> list[str]:
    out = []
    for path in modules().values():
        for name, line, length in function_lengths(path.read_text(encoding="utf-8")):
            if length > MAX_FUNCTION_LINES:
                out.append(f"{path.relative_to(ROOT)}:{line}: {name} has {length} lines")
    return out


# ---- the checker checks itself -----------------------------------------------------------
def test_imports_are_resolved_in_every_form() -> None:
    known = {"lpd", "lpd.infer", "lpd.infer._plan", "lpd.infer.tiled", "lpd.data"}
    src = ("import lpd.infer.tiled\nfrom lpd.infer import _plan, patch\nfrom . import tiled\n"
           "from ._plan import TilePlan\nfrom .. import data\ndef f():\n    import qtpy\n")
    got = sorted(imports_of(src, "lpd.infer.tiled", False, known))
    assert got == [("lpd.data", 5), ("lpd.infer", 2), ("lpd.infer._plan", 2),
                   ("lpd.infer._plan", 4), ("lpd.infer.tiled", 1), ("lpd.infer.tiled", 3),
                   ("qtpy", 7)]


def test_the_rules_catch_what_they_forbid() -> None:
    def imp(importer: str, imported: str) -> Import:
        return Import(importer, imported, "x.py:1")

    assert gui_violations((imp("lpd.a", "PyQt6.QtCore"), imp("lpd.a", "napari_lpd._x"),
                           imp("napari_lpd.a", "napari"), imp("lpd.a", "numpy"))) == [
        "x.py:1: lpd.a imports PyQt6.QtCore", "x.py:1: lpd.a imports napari_lpd._x"]
    assert len(widget_violations((imp("napari_lpd.widgets.a", "napari_lpd.widgets.b"),
                                  imp("napari_lpd.widgets.a", "napari_lpd._workers")))) == 1
    assert private_owner("lpd.infer._plan") == "lpd.infer" and private_owner("lpd.x") is None
    assert private_owner("lpd.__main__") is None and private_owner("lpd._atomic") == "lpd"
    assert len(private_violations((imp("lpd.infer.tiled", "lpd.infer._plan"),
                                   imp("lpd.infer", "lpd.infer._plan"),
                                   imp("lpd.io.store", "lpd._atomic"),
                                   imp("lpd.data.tags", "lpd.infer._reader"),
                                   imp("napari_lpd.a", "lpd._atomic")))) == 2
    assert len(data_violations((imp("lpd.data.a", "lpd.infer.tissue"),
                                imp("lpd.infer.a", "lpd.wsi.tissue")))) == 1
    assert wsi_violations((imp("lpd.wsi.slide", "lpd.data.pyramid"),
                           imp("lpd.wsi.levels", "lpd.errors"),
                           imp("lpd.data.tags", "lpd.wsi.levels"))) == [
        "x.py:1: lpd.wsi.slide imports lpd.data.pyramid (slide access sits below it)"]
    assert len(tiled_violations((imp("lpd.segmentation", TILED), imp("lpd.infer.x", TILED),
                                 imp("lpd.bench.throughput", TILED),
                                 imp("lpd.cli.predict_cmd", TILED),
                                 imp("napari_lpd._segment_job", TILED)))) == 2
    src = 'def f():\n    """Doc\n    string."""\n    a = 1\n    return a\n'
    assert list(function_lengths(src)) == [("f", 1, 3)]


# ---- the contracts -----------------------------------------------------------------------
def test_modules_are_found() -> None:
    names = modules()
    assert {"lpd", "lpd.infer.tiled", "lpd.segmentation", "napari_lpd", WIDGETS} <= set(names)


def test_lpd_never_imports_gui_or_plugin() -> None:
    fail_with("lpd imports GUI code or the plugin", gui_violations(all_imports()))


def test_no_widget_imports_another_widget() -> None:
    fail_with("a widget module imports another widget module", widget_violations(all_imports()))


def test_private_modules_stay_in_their_package() -> None:
    fail_with("private modules imported from outside their package",
              private_violations(all_imports()))


def test_data_never_imports_infer() -> None:
    fail_with("lpd.data imports lpd.infer", data_violations(all_imports()))


def test_slide_access_imports_nothing_above_it() -> None:
    fail_with("lpd.wsi imports a package above it", wsi_violations(all_imports()))


def test_only_the_orchestrator_imports_tiled_inference() -> None:
    fail_with(f"{TILED} imported outside lpd.segmentation, lpd.infer and the allow-list",
              tiled_violations(all_imports()))


def test_no_function_is_too_long() -> None:
    fail_with(f"functions over {MAX_FUNCTION_LINES} lines (def to last line, minus docstring)",
              length_violations())
