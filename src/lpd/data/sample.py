"""The project's own copies of real data (see ``sample_data/README.md`` for sources and
licences), so the demo and the tests never depend on anything outside the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SAMPLE_ROOT = Path(str(resources.files("lpd") / "sample_data"))
KATHER2016_TILES = SAMPLE_ROOT / "tiles" / "kather2016"
NCT_TILES = SAMPLE_ROOT / "tiles" / "nct"
CMU_SLIDE = SAMPLE_ROOT / "slides" / "cmu-1-small-region.svs"
TCGA_SLIDE = SAMPLE_ROOT / "slides" / "tcga-cr-7395-01a-01-ts1.svs"


def sample_path(*parts: str) -> Path:
    """Path of a file or folder inside the bundled sample data."""
    path = SAMPLE_ROOT.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not in the bundled sample data")
    return path
