"""Repository layout rules: the one manifest file. (The direction of imports and the other
architecture contracts are checked in tests/test_contracts.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_plugin_manifest_is_a_relative_link_to_the_root_manifest() -> None:
    link = ROOT / "napari_lpd" / "napari.yaml"
    if not link.is_symlink():
        pytest.fail(f"{link} must be a symlink to ../napari.yaml (one manifest, two places)")
    assert not os.path.isabs(os.readlink(link)), "an absolute link breaks in other checkouts"
    assert link.resolve() == (ROOT / "napari.yaml").resolve()
