"""Paths: tag sidecars and exports never write outside the folder the user chose, whatever
the image, layer or class names hold (``../``, absolute paths, NUL, backslashes...)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpd.data.tags import TagStore, export_training_folder, safe_stem, sidecar_path
from lpd.errors import InputError

NASTY = st.one_of(
    st.sampled_from(["../../evil", "..", "../", "/etc/passwd", "a/b/../../c", "x\x00y",
                     "C:\\temp\\x", "\\\\server\\share", ".hidden", "", "~", "évil 😀",
                     "tags+0[1111]", "a" * 300]),
    st.text(max_size=40),
)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _all_files(root: Path) -> set[Path]:
    return {Path(d) / f for d, _, fs in os.walk(root) for f in fs}


@SETTINGS
@given(name=NASTY)
def test_safe_stem_stays_a_plain_name(name) -> None:
    stem = safe_stem(name)
    assert stem and "/" not in stem and "\\" not in stem and "\x00" not in stem
    assert stem not in (".", "..") and not stem.startswith(".") and len(stem) <= 100
    assert Path(stem).name == stem


@SETTINGS
@given(name=NASTY, image_name=NASTY)
def test_training_export_stays_in_its_folder(tmp_path, name, image_name) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    out = root / "chosen"
    rgb = np.full((64, 64, 3), 128, np.uint8)
    image_stem = safe_stem(image_name)  # the image itself must exist on a real disk
    store = TagStore(root / f"{image_stem}.png", image_size=(64, 64))
    store.add((0, 0, 64, 64), ["TUM", "NEC"])
    try:
        files = export_training_folder(store, rgb, out, patch_size=32, name=name or None)
    except InputError as exc:  # a refusal is fine, naming the file
        assert exc.path
        files = []
    for f in files:
        assert f.resolve().parent == (out / "train").resolve()
    assert all(out in p.parents for p in _all_files(root))


@SETTINGS
@given(class_names=st.lists(NASTY, min_size=1, max_size=5))
def test_sidecar_class_names_are_data_not_paths(tmp_path, class_names) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    image = root / "slide.svs"
    image.write_bytes(b"x")
    doc = {"format": "lpd-tags", "version": 1, "class_names": class_names, "regions": [
        {"id": 1, "bbox": [0, 0, 5, 5], "classes": class_names[:1], "source": "manual"}]}
    sidecar_path(image).write_text(json.dumps(doc), encoding="utf-8")
    try:
        store = TagStore.load(image)
    except InputError as exc:
        assert Path(exc.path) == sidecar_path(image)
        return
    store.save()
    assert _all_files(root) == {image, sidecar_path(image)}


@pytest.mark.parametrize("name", ["..", ".", "", "/"])
def test_sidecar_needs_an_image_name(name) -> None:
    with pytest.raises(InputError, match="not an image file name"):
        sidecar_path(name)


def test_sidecar_is_beside_its_image(tmp_path) -> None:
    for name in ["a..b.png", "..png", "x.svs"]:
        assert sidecar_path(tmp_path / name).parent == tmp_path
