"""The INSTALLED distribution, not the source tree: entry points and the manifest napari
finds through them. pytest run from the repository root imports napari_lpd from the tree,
which would hide a wheel that forgot napari.yaml; these checks go through the metadata."""

from __future__ import annotations

from importlib import metadata

import pytest

DIST = "napari-lpd"


@pytest.fixture(scope="module")
def dist() -> metadata.Distribution:
    try:
        return metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{DIST} is not installed (run `make setup` or `pip install -e .`)")


def test_entry_points(dist: metadata.Distribution) -> None:
    eps = {(ep.group, ep.name): ep.value for ep in dist.entry_points}
    assert eps[("napari.manifest", DIST)] == "napari_lpd:napari.yaml"
    assert eps[("console_scripts", "lpd")] == "lpd.cli.main:main"
    assert eps[("console_scripts", "napari-lpd")] == "napari_lpd._cli:main"


def test_manifest_from_distribution(dist: metadata.Distribution) -> None:
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution(DIST)
    assert manifest.name == DIST
    assert manifest.package_version == dist.version
    assert "napari-lpd.sample_cmu" in {c.id for c in manifest.contributions.commands or []}
