"""Tag store: sidecar round trip, atomic saves, damaged sidecars, grid, patches, export."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lpd._atomic
import lpd.data.tag_files
from lpd.data.bcss import parse_tags
from lpd.data.sample import CMU_SLIDE, SAMPLE_ROOT
from lpd.data.synthetic import synthetic_tissue
from lpd.data.tags import (
    TagStore,
    cell_size,
    export_training_folder,
    folder_writable,
    grid_cells,
    iter_export,
    safe_stem,
    sidecar_path,
    tag_patches,
)
from lpd.errors import InputError


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rgb, _ = synthetic_tissue((200, 300), seed=5)
    path = tmp_path / "slide one.png"
    Image.fromarray(rgb).save(path)
    return path, rgb


def _store(path: Path) -> TagStore:
    store = TagStore.load(path, image_size=(200, 300))
    store.add((10.4, 20, 100, 50), ["LYM", "TUM"])
    store.add((0, 0, 64, 64), ["NEC"], source="grid")
    store.add((150, 100, 30, 30))  # not tagged yet
    return store


def test_round_trip_keeps_regions_classes_and_image_info(image) -> None:
    path, _ = image
    saved = _store(path).save()
    assert saved == path.parent / "slide one.png.lpd-tags.json" == sidecar_path(path)
    data = json.loads(saved.read_text())
    assert (data["format"], data["version"]) == ("lpd-tags", 1)
    assert data["image"]["name"] == "slide one.png"
    assert (data["image"]["width"], data["image"]["height"]) == (300, 200)
    assert data["image"]["file_bytes"] == path.stat().st_size and data["image"]["fingerprint"]
    back = TagStore.load(path)
    assert [(r.id, r.bbox, r.classes, r.source) for r in back.regions] == [
        (1, (10, 20, 101, 50), ("TUM", "LYM"), "rectangle"),  # rounded outwards, class order
        (2, (0, 0, 64, 64), ("NEC",), "grid"),
        (3, (150, 100, 30, 30), (), "rectangle"),
    ]
    assert back.image_size == (200, 300) and back.warnings == []
    assert [r.id for r in back.tagged()] == [1, 2]
    np.testing.assert_array_equal(back.region(1).tags(), [1, 0, 1, 0])
    back.update(3, classes=["STR"], bbox=(1, 2, 3, 4))
    back.remove(2)
    assert back.add((0, 0, 5, 5)).id == 4  # ids are never reused while higher ones exist


def test_missing_sidecar_is_an_empty_store_and_bad_regions_are_refused(image) -> None:
    path, _ = image
    store = TagStore.load(path)
    assert store.regions == [] and not store.sidecar.exists()
    with pytest.raises(InputError, match="unknown class"):
        store.add((0, 0, 5, 5), ["TUMOUR"])
    with pytest.raises(InputError, match="empty"):
        store.add((0, 0, 0, 5))
    with pytest.raises(InputError, match="source"):
        store.add((0, 0, 5, 5), source="lasso")


def test_a_failing_write_keeps_the_old_sidecar(image, monkeypatch) -> None:
    path, _ = image
    store = _store(path)
    store.save()
    before = store.sidecar.read_bytes()
    store.add((1, 1, 9, 9), ["STR"])

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lpd._atomic.os, "replace", disk_full)
    with pytest.raises(InputError, match="No space left") as exc:
        store.save()
    assert exc.value.path == str(store.sidecar)
    assert store.sidecar.read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, store.sidecar.name])  # no temp file left behind


@pytest.mark.parametrize(("content", "problem"), [
    (b"{not json", "not readable JSON"),
    (b'{"regions": []}', "not an LPD tag file"),
    (b'{"format": "lpd-tags", "version": 99, "class_names": ["TUM"], "regions": []}',
     "version 99"),
    (b'{"format": "lpd-tags", "version": 1, "class_names": ["TUM"], "regions": '
     b'[{"id": 1, "bbox": [0, 0, -5, 5], "classes": ["TUM"], "source": "grid"}]}',
     "region 1 is malformed"),
])
def test_damaged_sidecar_is_a_clear_error_and_kept_as_bak(image, content, problem) -> None:
    path, _ = image
    sidecar = sidecar_path(path)
    sidecar.write_bytes(content)
    with pytest.raises(InputError, match=problem) as exc:
        TagStore.load(path)
    assert exc.value.path == str(sidecar)
    store = TagStore(path)  # what the widget starts from after the error
    store.add((0, 0, 10, 10), ["TUM"])
    store.save()
    assert store.last_backup == sidecar.with_name(sidecar.name + ".bak")
    assert store.last_backup.read_bytes() == content  # the user's file, untouched
    assert [r.classes for r in TagStore.load(path).regions] == [("TUM",)]
    store.save()  # our own file now: no second backup
    assert not sidecar.with_name(sidecar.name + ".bak.1").exists()


def test_changed_image_is_flagged(image) -> None:
    path, rgb = image
    _store(path).save()
    Image.fromarray(rgb[::-1].copy()).save(path)
    store = TagStore.load(path, image_size=(100, 100))
    assert any("changed" in w for w in store.warnings)
    assert any("300x200" in w for w in store.warnings)


def test_grid_cells_tile_the_image() -> None:
    cells = grid_cells((200, 300), 128)
    assert cells[0] == (0, 0, 128, 128) and cells[-1] == (256, 128, 44, 72)
    cover = np.zeros((200, 300), int)
    for x, y, w, h in cells:
        cover[y : y + h, x : x + w] += 1
    assert (cover == 1).all()
    assert grid_cells((200, 300), 128, region=(130.5, 5, 1, 1)) == [(128, 0, 128, 128)]
    assert len(grid_cells((200, 300), 128, region=(100, 100, 60, 10))) == 2
    assert cell_size(224, 0.5, 0.25) == 448 and cell_size(224, None, 0.25) == 224


def test_patches_cover_regions_at_the_target_magnification(image) -> None:
    path, rgb = image
    store = _store(path)
    plan = tag_patches(store, rgb, patch_size=64)
    by_region = {rid: [p for p in plan.patches if p.region_id == rid] for rid in (1, 2)}
    assert len(by_region[1]) == 2 and len(by_region[2]) == 1  # 101x50 -> 2 crops (padded)
    patch = by_region[2][0]
    np.testing.assert_array_equal(patch.read(), rgb[0:64, 0:64])  # exact at level 0
    assert patch.tags == (0, 0, 0, 1)
    assert all(p.read().shape == (64, 64, 3) for p in plan.patches)
    # A two-level pyramid at 0.25 µm/px: 0.5 µm/px comes from level 1 without resampling.
    pyramid = [rgb, np.ascontiguousarray(rgb[::2, ::2])]
    plan = tag_patches(store, pyramid, patch_size=32, target_mpp=0.5, mpp=0.25)
    assert (plan.level, plan.resize, plan.mpp) == (1, 1.0, 0.5)
    grid = next(p for p in plan.patches if p.region_id == 2)
    np.testing.assert_array_equal(grid.read(), pyramid[1][0:32, 0:32])
    # Unknown magnification: full resolution, and a note saying so.
    assert "no microns per pixel" in tag_patches(store, rgb, target_mpp=0.5).notes[0]
    with pytest.raises(InputError, match="does not know"):
        tag_patches(store, rgb, class_names=("TUM", "STR"))


def test_export_writes_bcss_training_names_that_parse_back(image, tmp_path: Path) -> None:
    path, rgb = image
    store = _store(path)
    out = tmp_path / "export"
    files = export_training_folder(store, rgb, out, patch_size=64)
    assert len(files) == 3 and all(f.parent == out / "train" for f in files)
    names = sorted(f.name for f in files)
    assert names[0].startswith("slide_one_x0_y0+0[0001]")
    for f in files:
        region = 1 if "[1010]" in f.name else 2
        np.testing.assert_array_equal(parse_tags(f), store.region(region).tags())
        assert np.asarray(Image.open(f)).shape == (64, 64, 3)
    progress = list(iter_export(store, rgb, out, patch_size=64))
    assert progress[-1] == (3, 3)
    with pytest.raises(InputError, match="no tagged regions"):
        export_training_folder(TagStore(path), rgb, out)


@pytest.mark.parametrize("name", [
    "../../evil", "../", "..", "a/b/../../c", "x\x00y", "/etc/passwd", "C:\\temp\\x",
    "tags+0[1111]", ".hidden", "", "évil name 😀",
])
def test_export_names_never_leave_the_output_folder(image, tmp_path: Path, name: str) -> None:
    path, rgb = image
    store = TagStore(path)
    store.add((0, 0, 64, 64), ["STR"])
    out = tmp_path / "out"
    files = export_training_folder(store, rgb, out, patch_size=64, name=name)
    every = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [p for p in every if out not in p.parents] == [path]  # only the source image
    assert files[0].parent.resolve() == (out / "train").resolve()
    assert not files[0].name.startswith(".")
    np.testing.assert_array_equal(parse_tags(files[0]), [0, 1, 0, 0])


def test_export_name_from_a_hostile_image_file_name(tmp_path: Path) -> None:
    rgb, _ = synthetic_tissue(64, seed=1)
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "..[1111]+0 x.ome.tif"
    store = TagStore(path)
    store.add((0, 0, 64, 64), ["TUM"])
    [f] = export_training_folder(store, rgb, tmp_path / "out", patch_size=64)
    assert f.parent == tmp_path / "out" / "train"
    np.testing.assert_array_equal(parse_tags(f), [1, 0, 0, 0])
    assert safe_stem("../../a/b") == "a_b" and safe_stem("..") == "image"


def test_sidecars_of_samples_and_read_only_folders_go_to_the_data_folder(
        tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("LPD_DATA_DIR", str(data))
    sample = sidecar_path(CMU_SLIDE)  # never inside the (installed) package
    assert sample.parent == data / "tags" and SAMPLE_ROOT not in sample.parents
    store = TagStore(CMU_SLIDE)
    store.add((0, 0, 10, 10), ["TUM"])
    assert store.save() == sample and sample.exists()
    assert [r.classes for r in TagStore.load(CMU_SLIDE).regions] == [("TUM",)]

    mine = tmp_path / "mine" / "he.png"  # a user's writable folder: beside the image
    mine.parent.mkdir()
    assert sidecar_path(mine) == mine.parent / "he.png.lpd-tags.json"

    shared, other = tmp_path / "shared" / "he.png", tmp_path / "shared2" / "he.png"
    read_only = {shared.parent, other.parent}  # read-only folders: the data folder
    for folder in read_only:
        folder.mkdir()
        os.chmod(folder, 0o555)
    try:
        if folder_writable(shared.parent):  # root writes anyway: pretend it cannot
            assert os.geteuid() == 0
            real = folder_writable
            monkeypatch.setattr(lpd.data.tag_files, "folder_writable",
                                lambda folder: Path(folder) not in read_only and real(folder))
        ro = sidecar_path(shared)
        assert ro.parent == data / "tags" and ro.name.startswith("he.png-")
        assert sidecar_path(shared) == ro != sidecar_path(other)  # stable, no collision
        assert sidecar_path(other).parent == data / "tags"
    finally:
        for folder in read_only:
            os.chmod(folder, 0o755)
    assert not any(p.name.endswith(".lpd-tags.json") for p in tmp_path.rglob("*")
                   if data not in p.parents)


def test_folder_writable_checks_for_real(tmp_path: Path) -> None:
    assert folder_writable(tmp_path)
    assert not folder_writable(tmp_path / "missing")
    assert list(tmp_path.iterdir()) == []  # the test file is gone
