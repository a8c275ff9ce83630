"""Property-based / fuzz tests (hypothesis) of everything that reads user files: slide
reader, BCSS-WSSS names, tag sidecars, checkpoints, GeoJSON/CSV exports. Every bad input
must raise an ``InputError`` (or ``CheckpointError``) naming the file and the problem;
never another exception. The number of inputs each target tried is printed at the end."""

from __future__ import annotations

import collections
import csv
import functools
import json
import logging
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file
from shapely.geometry import shape

from lpd.classes import CLASS_COLOURS, CLASS_NAMES
from lpd.data.bcss import parse_tags
from lpd.data.sample import CMU_SLIDE, TCGA_SLIDE
from lpd.data.tags import TagStore, sidecar_path
from lpd.errors import CheckpointError, InputError
from lpd.io.checkpoint import load_checkpoint, save_checkpoint
from lpd.io.export import export_csv, export_geojson
from lpd.io.store import OutputStore
from lpd.model import create_model
from lpd.wsi.slide import open_slide

TRIED: collections.Counter[str] = collections.Counter()
FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
MANY = settings(FAST, max_examples=150)


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # broken files make tifffile log; we assert on errors
    yield
    logger.setLevel(level)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\nfuzz inputs tried: " + ", ".join(f"{k}={v}" for k, v in sorted(TRIED.items())))


def _names_file(exc: InputError, path: Path) -> None:
    assert exc.path is not None and Path(exc.path).name == path.name, str(exc)
    assert str(path.name) in str(exc) and exc.problem.strip(), str(exc)


# -- slide reader ------------------------------------------------------------------------
def _open_and_read(path: Path) -> None:
    """Open and read a corner of every level; only InputError naming the file is allowed."""
    try:
        with open_slide(path) as slide:
            for level in slide.levels:
                h, w = level.shape[:2]
                tile = np.asarray(level[: min(h, 64), : min(w, 64)])
                assert tile.dtype == np.uint8 and tile.shape[2] == 3
                tile = np.asarray(level[max(0, h - 64):, max(0, w - 64):])
                assert tile.dtype == np.uint8 and tile.shape[2] == 3
    except InputError as exc:
        _names_file(exc, path)


@pytest.mark.parametrize("source", [CMU_SLIDE, TCGA_SLIDE], ids=["cmu", "tcga"])
@FAST
@given(fraction=st.floats(0.0, 0.999))
def test_truncated_real_slides(tmp_path, source, fraction) -> None:
    TRIED["slide: truncated svs"] += 1
    data = source.read_bytes()
    path = tmp_path / f"cut-{source.name}"
    path.write_bytes(data[: int(len(data) * fraction)])
    _open_and_read(path)


@FAST
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".svs", ".tif", ".png", ".jpg",
                                                                ".ndpi", ".txt", ""]),
       magic=st.sampled_from([b"", b"II*\x00", b"MM\x00*", b"II+\x00", b"\x89PNG\r\n\x1a\n",
                              b"\xff\xd8\xff"]))
def test_random_bytes_and_wrong_extensions(tmp_path, data, suffix, magic) -> None:
    TRIED["slide: random bytes"] += 1
    path = tmp_path / f"random{suffix}"
    path.write_bytes(magic + data)
    if not (magic + data):
        with pytest.raises(InputError, match="empty") as info:
            open_slide(path)
        _names_file(info.value, path)
        return
    _open_and_read(path)


@pytest.mark.parametrize("source", [CMU_SLIDE], ids=["cmu"])
def test_real_slide_with_other_extensions(tmp_path, source) -> None:
    for suffix in (".png", ".jpg", ".txt", ".tif"):
        TRIED["slide: wrong extension"] += 1
        path = tmp_path / f"slide{suffix}"
        shutil.copy(source, path)
        with open_slide(path) as slide:  # read by content, not by extension
            assert slide.shape[0] > 100


_DTYPES = st.sampled_from(["u1", "u2", "f4", "f8", "bool"])


@FAST
@given(h=st.integers(1, 40), w=st.integers(1, 40), channels=st.sampled_from([0, 1, 2, 3, 4]),
       dtype=_DTYPES, writer=st.sampled_from(["tiff", "png"]), seed=st.integers(0, 9),
       special=st.sampled_from([None, np.nan, np.inf]))
def test_odd_images(tmp_path, h, w, channels, dtype, writer, seed, special) -> None:
    """Grayscale, 2-channel, RGB, RGBA; 8/16-bit, float (with NaN/Inf), bool; 1x1 and
    smaller than a tile: each opens as uint8 RGB or fails with a named InputError."""
    TRIED["slide: odd images"] += 1
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 0 else (h, w, channels)
    if dtype == "bool":
        arr = rng.random(shape) > 0.5
    elif dtype.startswith("f"):
        arr = rng.random(shape).astype(dtype)
        if special is not None:
            arr.flat[0] = special
    else:
        arr = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    if writer == "png":
        if dtype not in ("u1", "u2") or channels in (1, 2) or (dtype == "u2" and channels):
            return  # not representable in a PNG via PIL (no H x W x 1 or 2-channel modes)
        path = tmp_path / "img.png"
        Image.fromarray(arr).save(path)
    else:
        path = tmp_path / "img.tif"
        tifffile.imwrite(path, arr, photometric="rgb" if channels in (3, 4) else None)
    _open_and_read(path)


# -- BCSS names --------------------------------------------------------------------------
@MANY
@given(name=st.text(max_size=60))
def test_bcss_names(name) -> None:
    TRIED["bcss: arbitrary names"] += 1
    try:
        tags = parse_tags(name)
    except InputError as exc:
        assert exc.path == name and exc.problem
        return
    assert tags.shape == (4,) and tags.dtype == np.float32 and set(tags.tolist()) <= {0.0, 1.0}


@MANY
@given(prefix=st.text(max_size=20), digits=st.text("01", min_size=4, max_size=4),
       suffix=st.sampled_from([".png", ".jpg", ""]))
def test_bcss_good_names_parse(prefix, digits, suffix) -> None:
    TRIED["bcss: valid names"] += 1
    name = f"{prefix.replace('[', '').replace(']', '').replace('/', '')}+0[{digits}]{suffix}"
    assert parse_tags(name).tolist() == [float(d) for d in digits]


# -- tag sidecars ------------------------------------------------------------------------
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


def _sidecar_like() -> st.SearchStrategy:
    region = st.fixed_dictionaries({
        "id": st.one_of(st.integers(-3, 5), st.text(max_size=3), st.none()),
        "bbox": st.one_of(st.lists(st.one_of(st.floats(allow_nan=True), st.integers()),
                                   max_size=5), _JSON),
        "classes": st.one_of(st.lists(st.sampled_from([*CLASS_NAMES, "X", ""]), max_size=5),
                             _JSON),
        "source": st.sampled_from(["manual", "auto", "x", 3]),
    })
    return st.fixed_dictionaries({
        "format": st.sampled_from(["lpd-tags", "x", 1]),
        "version": st.one_of(st.integers(-1, 3), st.text(max_size=2)),
        "class_names": st.one_of(st.just(list(CLASS_NAMES)), _JSON),
        "regions": st.one_of(st.lists(region, max_size=3), _JSON),
        "image": _JSON,
    })


def _load_sidecar(tmp_path: Path, raw: bytes) -> None:
    image = tmp_path / "slide.svs"
    image.write_bytes(b"x")
    sidecar = sidecar_path(image)
    sidecar.write_bytes(raw)
    try:
        store = TagStore.load(image)
    except InputError as exc:
        _names_file(exc, sidecar)
        return
    store.save()  # whatever loaded can be written back and read again
    again = TagStore.load(image)
    assert [r.bbox for r in again.regions] == [r.bbox for r in store.regions]


@MANY
@given(doc=st.one_of(_JSON, _sidecar_like()))
def test_sidecar_json(tmp_path, doc) -> None:
    TRIED["sidecar: json"] += 1
    _load_sidecar(tmp_path, json.dumps(doc).encode())


@FAST
@given(raw=st.binary(max_size=200))
def test_sidecar_bytes(tmp_path, raw) -> None:
    TRIED["sidecar: bytes"] += 1
    _load_sidecar(tmp_path, raw)


# -- checkpoints -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_ckpt(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@functools.cache
def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _refused(path: Path, *args, **kwargs) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, *args, **kwargs)
    _names_file(info.value, path)
    return info.value


@FAST
@given(raw=st.binary(max_size=512))
def test_checkpoint_random_bytes(tmp_path, raw) -> None:
    TRIED["checkpoint: random bytes"] += 1
    path = tmp_path / "random.safetensors"
    path.write_bytes(raw)
    _refused(path)


@FAST
@given(fraction=st.floats(0.0, 0.9999))
def test_checkpoint_truncated(tmp_path, real_ckpt, fraction) -> None:
    TRIED["checkpoint: truncated"] += 1
    data = real_ckpt.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: int(len(data) * fraction)])
    _refused(path)


@settings(FAST, max_examples=4)
@given(value=st.sampled_from([np.nan, np.inf, -np.inf]), pick=st.integers(0, 10**6),
       at=st.integers(0, 10**6))
def test_checkpoint_nan_inf(tmp_path, real_ckpt, value, pick, at) -> None:
    TRIED["checkpoint: nan/inf"] += 1
    from safetensors import safe_open
    with safe_open(str(real_ckpt), framework="pt") as fh:
        meta = fh.metadata()
    state = {k: v.clone() for k, v in _state(real_ckpt).items()}
    floats = sorted(k for k, v in state.items() if v.is_floating_point() and v.numel())
    key = floats[pick % len(floats)]
    state[key].view(-1)[at % state[key].numel()] = float(value)
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path), metadata=meta)
    assert "NaN or Inf" in str(_refused(path))


@pytest.mark.parametrize("kwargs", [dict(num_classes=3), dict(num_classes=5),
                                    dict(backbone="resnet34")])
def test_checkpoint_of_another_model(tmp_path, kwargs) -> None:
    TRIED["checkpoint: other model"] += 1
    backbone = kwargs.pop("backbone", "resnet18")
    n = kwargs.pop("num_classes", 4)
    names = [f"C{i}" for i in range(n)]
    try:
        model = create_model(backbone, prototypes_per_class=1, prototype_dim=8, input_size=96,
                             class_names=names)
    except TypeError:
        pytest.skip("create_model has no class_names option")
    path = save_checkpoint(tmp_path / "other.safetensors", model)
    message = str(_refused(path, expect_num_classes=4, expect_backbone="resnet18"))
    assert ("classes" in message) or ("backbone" in message)


@pytest.mark.parametrize("proto", [2, 3, 4, 5, "zip"])
def test_checkpoint_pickle_with_code_is_not_run(tmp_path, proto) -> None:
    TRIED["checkpoint: pickle"] += 1
    marker = tmp_path / "ran"
    evil = type("Evil", (), {"__reduce__": lambda self: (Path.touch, (marker,))})
    path = tmp_path / "model.safetensors"
    if proto == "zip":
        torch.save({"x": evil()}, path)
    else:
        path.write_bytes(pickle.dumps({"x": evil()}, protocol=proto))
    message = str(_refused(path))
    assert "pickle" in message or "safetensors" in message
    assert not marker.exists()


# -- exports -----------------------------------------------------------------------------
COLOURS = [CLASS_COLOURS[c] for c in CLASS_NAMES]


@settings(FAST, max_examples=15)
@given(h=st.integers(1, 48), w=st.integers(1, 48), seed=st.integers(0, 10**6),
       density=st.floats(0, 1), mpp=st.sampled_from([None, 0.5]))
def test_exports_of_random_label_maps(tmp_path, h, w, seed, density, mpp) -> None:
    TRIED["exports: label maps"] += 1
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, (h, w)).astype(np.uint8)
    labels[rng.random((h, w)) > density] = 0
    out = Path(tempfile.mkdtemp(dir=tmp_path))  # tmp_path is shared by the examples
    store = OutputStore.create(out / "s.zarr", shape=(h, w), tile=16, chunk=32,
                               class_names=CLASS_NAMES, class_colours=COLOURS, mpp=mpp,
                               scale=2.0, offset=(10.0, 20.0))
    for i in range(-(-h // 16)):
        for j in range(-(-w // 16)):
            store.put_tile(i, j, labels[i * 16:(i + 1) * 16, j * 16:(j + 1) * 16])
    list(store.build_pyramid())
    store.mark_complete()
    geo = json.loads(export_geojson(store, out / "s.geojson", simplify=0, class_names="lpd",
                                    min_area_um2=0, min_area_px=0).read_text())
    area = collections.Counter()
    for feature in geo["features"]:
        poly = shape(feature["geometry"])
        assert poly.is_valid and not poly.is_empty, shapely.validation.explain_validity(poly)
        name = feature["properties"]["classification"]["name"]
        assert name in CLASS_NAMES
        area[name] += poly.area
    for v, name in enumerate(CLASS_NAMES, 1):  # level-0 px: scale 2 -> 4 px² per label px
        # contours trace pixel edges with chamfered corners (marching squares at 0.5): each
        # pixel gains or loses at most 4 x 1/8 px² (a lone pixel is a diamond of 1/2 px²)
        exact = 4.0 * (labels == v).sum()
        assert abs(area[name] - exact) <= 0.5 * exact + 1e-6, (name, area[name], exact)
    with open(export_csv(store, out / "s.csv"), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(float(r["percent_region"]) for r in rows) == pytest.approx(100.0, abs=1e-3)
    tissue = [float(r["percent_tissue"]) for r in rows if r["percent_tissue"]]
    if (labels > 0).any():
        assert sum(tissue) == pytest.approx(100.0, abs=1e-3)


# -- regressions found by the targets above ---------------------------------------------
def test_tiff_directory_offset_past_the_end_is_a_named_error(tmp_path) -> None:
    """A BigTIFF whose first directory offset is huge: seek() raised OSError (EINVAL)."""
    path = tmp_path / "big.svs"
    path.write_bytes(b"II+\x00" + b"\x00" * 11 + b"\x80")
    with pytest.raises(InputError, match="past the end of the file") as info:
        open_slide(path)
    _names_file(info.value, path)


def test_bcss_name_without_extension_keeps_its_tags() -> None:
    """``...MPP-0.2500+0[1101]`` (no extension): the tags were taken for a suffix."""
    assert parse_tags("TCGA-A1_MPP-0.2500+0[1101]").tolist() == [1.0, 1.0, 0.0, 1.0]
