"""The README's Python API example runs as written (the first ```python block of its
"Python API" section)."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _first_python_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch) -> None:
    code = _first_python_block()
    assert len(code.strip().splitlines()) == 5
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), namespace)
    areas_line, files_line = out.getvalue().strip().splitlines()
    areas = ast.literal_eval(areas_line)
    assert set(areas) == {"TUM", "STR", "LYM", "NEC"} and sum(areas.values()) > 0
    name = "cmu-1-small-region_x0_y0_w1024_h1024"
    for suffix in ("-labels.tiff", ".geojson", "-areas.csv"):
        assert (tmp_path / "lpd-results" / f"{name}{suffix}").stat().st_size > 0
    assert "PosixPath" in files_line or "WindowsPath" in files_line
    assert not Path(namespace["seg"].store.path).exists()  # the temporary store is gone
