"""Every user file we read, fuzzed with hypothesis (issue 14, item 9): tag sidecars, the
JSON metadata of checkpoints, prediction-store metadata, BCSS-WSSS file names and masks.

Each valid document is mutated as other versions and hand edits change files: encodings
(UTF-8 with/without BOM, UTF-16/32 with BOM, cp1252), line endings (LF, CRLF, CR), extra
keys, missing keys, values of the wrong type. Each input must either load with every
value it holds (no silent loss) or raise ``InputError`` naming the file; never another
exception. The examples tried per target are printed at the end of the module."""

from __future__ import annotations

import codecs
import collections
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from lpd.classes import CLASS_COLOURS, CLASS_NAMES
from lpd.config import ModelConfig
from lpd.data.bcss import BCSS_TO_LABEL, find_bcss, parse_tags, read_bcss_mask
from lpd.data.tags import SOURCES, TagStore, sidecar_path
from lpd.errors import CheckpointError, InputError
from lpd.io.checkpoint import FORMAT as CKPT_FORMAT
from lpd.io.checkpoint import read_checkpoint_metadata
from lpd.io.store import OutputStore

TRIED: collections.Counter[str] = collections.Counter()
FUZZ = settings(max_examples=150, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
COLOURS = [CLASS_COLOURS[c] for c in CLASS_NAMES]


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\nuser-file fuzz examples: " + ", ".join(
            f"{k}={v}" for k, v in sorted(TRIED.items())))


def _names(exc: InputError, path: Path) -> None:
    assert exc.path is not None and Path(exc.path) == Path(path), str(exc)
    assert exc.problem.strip() and "\n" not in exc.problem, str(exc)


# -- how files get changed ---------------------------------------------------------------
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom", "utf-32",
             "cp1252"]
UNICODE_WITH_MARK = {"utf-8", "utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom",
                     "utf-32"}


def encode(text: str, encoding: str, newline: str) -> bytes:
    """``text`` as an editor would save it (a cp1252 file fails for non-Latin text)."""
    text = text.replace("\n", newline)
    if encoding == "utf-8-sig":
        return codecs.BOM_UTF8 + text.encode("utf-8")
    if encoding == "utf-16-le-bom":
        return codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    if encoding == "utf-16-be-bom":
        return codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    return text.encode(encoding, errors="replace")  # utf-16/32 write their own mark


def readable(text: str, encoding: str) -> bool:
    """Whether the saved bytes still say ``text`` in a way we must read."""
    return encoding in UNICODE_WITH_MARK or text.isascii()


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**70) | st.floats()
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8)


@st.composite
def mutations(draw, doc_keys: list[str]) -> dict:
    """What an edit does to a document: keys added, dropped, retyped; how it is saved."""
    return {
        "extra": draw(st.dictionaries(st.text(min_size=1, max_size=8), JSON_VALUE, max_size=2)),
        "drop": draw(st.lists(st.sampled_from(doc_keys), max_size=2, unique=True)),
        "retype": draw(st.dictionaries(st.sampled_from(doc_keys), JSON_VALUE, max_size=2)),
        "encoding": draw(st.sampled_from(ENCODINGS)),
        "newline": draw(st.sampled_from(["\n", "\r\n", "\r"])),
        "indent": draw(st.sampled_from([None, 1, 4])),
        "ascii": draw(st.booleans()),
    }


def mutate(doc: dict, m: dict) -> dict:
    out = {k: v for k, v in doc.items() if k not in m["drop"]}
    out.update(m["retype"])
    for k, v in m["extra"].items():
        out.setdefault(k, v)
    return out


def dumps(doc: object, m: dict) -> str:
    return json.dumps(doc, indent=m["indent"], ensure_ascii=m["ascii"])


# -- tag sidecars --------------------------------------------------------------------------
NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                max_size=6)
REGION = st.fixed_dictionaries({
    "id": st.integers(1, 10**6),
    "bbox": st.tuples(st.integers(-50, 10**5), st.integers(-50, 10**5),
                      st.integers(1, 5000), st.integers(1, 5000)).map(list)
    | st.tuples(*[st.floats(0, 1e4)] * 2, *[st.floats(0.5, 1e3)] * 2).map(list),
    "classes": st.lists(st.sampled_from(CLASS_NAMES), unique=True, max_size=4),
    "source": st.sampled_from(SOURCES),
})


@st.composite
def sidecars(draw) -> tuple[dict, dict, int | None, dict | None]:
    regions = draw(st.lists(REGION, max_size=4, unique_by=lambda r: r["id"]))
    doc = {"format": "lpd-tags", "version": 1,
           "image": {"name": draw(NAMES), "width": 300, "height": 200,
                     "file_bytes": None, "fingerprint": None},
           "class_names": list(CLASS_NAMES), "regions": regions}
    m = draw(mutations(list(doc)))
    # one region may be edited too (same kinds of change)
    pick = draw(st.none() | st.integers(0, max(0, len(regions) - 1))) if regions else None
    rm = draw(mutations(["id", "bbox", "classes", "source"])) if pick is not None else None
    return doc, m, pick, rm


def _polygon_box(rings: object) -> tuple[int, int, int, int] | None:
    """The whole-pixel box of a version-2 region's polygon; None: it must be refused (not
    a list of [x, y] rings, non-finite, or not a valid polygon by shapely)."""
    from shapely.geometry import Polygon

    try:
        poly = Polygon(rings[0], rings[1:])  # type: ignore[index]
        ok = (isinstance(rings, list) and all(isinstance(r, list) and len(r) >= 3 for r in rings)
              and all(isinstance(pt, list) and len(pt) == 2 for r in rings for pt in r)
              and all(type(v) in (int, float) and math.isfinite(v) and abs(v) <= 1e12
                      for r in rings for pt in r for v in pt)
              and poly.is_valid and poly.area > 0)
    except Exception:
        return None
    if not ok:
        return None
    x0, y0, x1, y1 = poly.bounds
    eps = 1e-6
    fx, fy = math.floor(x0 + eps), math.floor(y0 + eps)
    return fx, fy, max(1, math.ceil(x1 - eps) - fx), max(1, math.ceil(y1 - eps) - fy)


def _expected_regions(doc: dict) -> list[tuple] | None:
    """What a loader must return for ``doc``; None: it must refuse it."""
    if (not isinstance(doc, dict) or doc.get("format") != "lpd-tags"
            or type(doc.get("version")) is not int or doc.get("version") not in (1, 2)):
        return None
    names, regions = doc.get("class_names"), doc.get("regions")
    if (not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names) or not isinstance(regions, list)):
        return None
    out, seen = [], set()
    for r in regions:
        if not isinstance(r, dict) or not {"id", "bbox", "classes", "source"} <= set(r):
            return None
        rid, bbox, classes, source = r["id"], r["bbox"], r["classes"], r["source"]
        if (type(rid) is not int or rid in seen or not isinstance(source, str)
                or source not in SOURCES or not isinstance(classes, list)
                or not all(isinstance(c, str) and c in names for c in classes)
                or not isinstance(bbox, list) or len(bbox) != 4
                or not all(type(v) in (int, float) for v in bbox)
                or not all(abs(v) <= 1e12 for v in bbox) or bbox[2] <= 0 or bbox[3] <= 0):
            return None
        seen.add(rid)
        x0, y0 = math.floor(bbox[0]), math.floor(bbox[1])
        box = (x0, y0, max(1, math.ceil(bbox[0] + bbox[2]) - x0),
               max(1, math.ceil(bbox[1] + bbox[3]) - y0))
        if doc["version"] == 2 and r.get("polygon") is not None:  # the box is the polygon's
            box = _polygon_box(r["polygon"])
            if box is None:
                return None
        out.append((rid, box, set(classes), source))
    return out


@FUZZ
@given(case=sidecars())
def test_fuzz_tag_sidecar(tmp_path, case) -> None:
    TRIED["tag sidecar"] += 1
    doc, m, pick, rm = case
    edited = mutate(doc, m)
    regions = edited.get("regions")
    if pick is not None and isinstance(regions, list) and pick < len(regions) \
            and isinstance(regions[pick], dict):
        edited["regions"] = [*regions[:pick], mutate(regions[pick], rm), *regions[pick + 1:]]
    text = dumps(edited, m)
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    image = folder / "slide.png"
    image.write_bytes(b"not read")
    sidecar = sidecar_path(image)
    raw = encode(text, m["encoding"], m["newline"])
    sidecar.write_bytes(raw)
    if readable(text, m["encoding"]):
        meant = edited  # what the user saved
    else:  # cp1252 bytes: a file without a byte-order mark says UTF-8
        try:
            meant = json.loads(raw.decode("utf-8").replace("\r", "\n"))
        except ValueError:  # UnicodeDecodeError included: must be refused
            meant = None
    expected = None if meant is None else _expected_regions(meant)
    try:
        store = TagStore.load(image)
    except InputError as exc:
        _names(exc, sidecar)
        assert expected is None, f"refused a readable sidecar: {exc}"
        kept = TagStore(image)
        kept.save()  # the user's file is moved aside, never overwritten
        assert kept.last_backup is not None and kept.last_backup.read_bytes() == raw
        return
    assert expected is not None, "loaded a sidecar it should refuse"
    got = [(r.id, r.bbox, set(r.classes), r.source) for r in store.regions]
    assert got == expected  # every region, exactly: nothing dropped or changed
    store.save()
    assert store.last_backup is None
    again = TagStore.load(image)
    assert [(r.id, r.bbox, set(r.classes), r.source) for r in again.regions] == expected


# -- checkpoints' JSON metadata --------------------------------------------------------------
TENSORS = {"w": torch.zeros(2)}
CONFIG = ModelConfig(backbone="resnet18", prototypes_per_class=2, prototype_dim=16,
                     microns_per_pixel=0.5).to_dict()


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


@st.composite
def checkpoint_metadata(draw) -> tuple[dict, dict, dict, dict]:
    config = json.loads(json.dumps(CONFIG))
    cm = draw(mutations(list(config)))
    extra = draw(st.dictionaries(st.text(max_size=5), JSON_VALUE, max_size=3))
    meta = {"format": CKPT_FORMAT, "format_version": "1", "lpd_version": "0.1",
            "config": None, "extra": None}
    mm = draw(mutations(list(meta)))
    mm["retype"] = {k: draw(st.text(max_size=8)) for k in mm["retype"]}  # strings only
    return config, cm, extra, mm


def _config_fits(doc: object) -> bool:
    """Whether a config document must be accepted (the types ModelConfig declares)."""
    if not isinstance(doc, dict) or set(doc) - set(CONFIG):
        return False
    try:
        from lpd.io.checkpoint import check_config

        check_config(ModelConfig.from_dict(doc))
    except (InputError, TypeError, ValueError):
        return False
    return True


@FUZZ
@given(case=checkpoint_metadata())
def test_fuzz_checkpoint_json_metadata(tmp_path, case) -> None:
    TRIED["checkpoint JSON metadata"] += 1
    config, cm, extra, mm = case
    edited = mutate(config, cm)
    config_text = dumps(edited, cm).replace("\n", cm["newline"])
    if cm["encoding"] == "utf-8-sig":
        config_text = "\ufeff" + config_text
    meta = {"format": CKPT_FORMAT, "format_version": "1", "lpd_version": "0.1",
            "config": config_text, "extra": "\ufeff" + json.dumps(extra)}
    meta = {k: v for k, v in meta.items() if k not in mm["drop"]}
    meta.update(mm["retype"])
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in mm["extra"].items()
                 if k not in meta})
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "m.safetensors"
    save_file(TENSORS, str(path), metadata=meta)
    try:
        got, got_extra = read_checkpoint_metadata(path)
    except CheckpointError as exc:
        _names(exc, path)
        good_extra = ("\ufeff" + json.dumps(extra), "")
        must_load = (meta.get("format") == CKPT_FORMAT and meta.get("config") == config_text
                     and meta.get("extra", good_extra[0]) in good_extra
                     and _config_fits(edited))
        assert not must_load, f"refused a good checkpoint: {exc}"
        return
    assert meta.get("format") == CKPT_FORMAT
    if meta.get("config") == config_text:
        assert _config_fits(edited), "loaded a config of the wrong types"
        for key, value in edited.items():  # every setting, as written (NEC's colour updated)
            if key != "class_colours":
                assert getattr(got, key) == _tupled(value), key
    if "extra" not in meta or meta["extra"] == "":
        assert got_extra == {}
    elif meta["extra"] == "\ufeff" + json.dumps(extra):
        assert got_extra == extra


# -- store metadata ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    labels = np.zeros((60, 50), np.uint8)
    labels[5:30, 10:40] = 2
    store = OutputStore.create(path, shape=labels.shape, tile=10, chunk=20,
                               class_names=CLASS_NAMES, class_colours=COLOURS, mpp=0.5,
                               scale=2.0, offset=(4.0, 8.0), info={"source": "x.svs"})
    for i in range(6):
        for j in range(5):
            store.put_tile(i, j, labels[i * 10 : i * 10 + 10, j * 10 : j * 10 + 10])
    list(store.build_pyramid())
    store.mark_complete()
    return path


@st.composite
def store_documents(draw, original: dict) -> tuple[dict, dict]:
    lpd = original["attributes"]["lpd"]
    return lpd, draw(mutations(list(lpd)))


def _use_store(store: OutputStore) -> dict:
    """Everything a reader takes from a store; raises only if the store is unusable."""
    out = {"shape": store.shape, "tile": store.tile, "chunk": store.chunk,
           "complete": store.complete, "names": store.class_names,
           "colours": store.class_colours, "mpp": store.mpp, "scale": store.scale,
           "offset": store.offset, "levels": store.n_levels, "passes": store.passes}
    for lv in range(store.n_levels):
        np.asarray(store.level(lv)[:4, :4])
    store.finished()
    return out


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_fuzz_store_metadata(store_dir, data) -> None:
    TRIED["store metadata"] += 1
    meta_file = store_dir / "zarr.json"
    original_bytes = meta_file.read_bytes()
    original = json.loads(original_bytes)
    lpd, m = data.draw(store_documents(original))
    doc = json.loads(original_bytes)
    doc["attributes"]["lpd"] = mutate(lpd, m)
    text = dumps(doc, m)
    try:
        meta_file.write_bytes(encode(text, m["encoding"], m["newline"]))
        try:
            store = OutputStore.open(store_dir)
        except InputError as exc:
            _names(exc, store_dir)
            return
        used = _use_store(store)
        # what was written is what is read (no key silently replaced by a default)
        for key in ("shape", "tile", "chunk", "complete", "mpp", "scale"):
            if key in doc["attributes"]["lpd"]:
                want = doc["attributes"]["lpd"][key]
                assert (list(used[key]) if key == "shape" else used[key]) == want, key
        assert used["names"] == doc["attributes"]["lpd"]["class_names"]
    finally:
        meta_file.write_bytes(original_bytes)


# -- BCSS names --------------------------------------------------------------------------------
NAME_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="/\\\x00",
                                  exclude_categories=("Cs",)), max_size=30)


@st.composite
def bcss_names(draw) -> tuple[str, list[float] | None]:
    prefix = draw(NAME_TEXT)
    digits = draw(st.text("01", min_size=4, max_size=4) | st.text("0123x ", max_size=6))
    suffix = draw(st.sampled_from([".png", ".PNG", ".jpg", ".tif", ""]))
    tail = draw(st.sampled_from(["", " ", "\r", "\n", "\r\n", "_copy"]))
    name = f"{prefix}+0[{digits}]{tail}{suffix}"
    good = len(digits) == 4 and set(digits) <= {"0", "1"} and "[" not in tail + suffix
    return name, [float(d) for d in digits] if good else None


@settings(FUZZ, max_examples=200)
@given(case=bcss_names())
def test_fuzz_bcss_file_names(case) -> None:
    TRIED["BCSS file names"] += 1
    name, tags = case
    try:
        got = parse_tags(name)
    except InputError as exc:
        assert exc.path == name and exc.problem
        assert tags is None or "[" in name.rsplit("[", 1)[0] and "]" in name.rsplit("]", 1)[1] \
            or "]" in name[name.rfind("[" + "".join(str(int(t)) for t in tags)):], name
        return
    if tags is not None:
        assert got.tolist() == tags, name
    assert got.shape == (4,) and set(got.tolist()) <= {0.0, 1.0}


@settings(FUZZ, max_examples=60)
@given(names=st.lists(bcss_names(), min_size=1, max_size=4))
def test_fuzz_bcss_folder_names(tmp_path, names) -> None:
    TRIED["BCSS folders (files on disk)"] += 1
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    train = root / "train"
    train.mkdir()
    made = {}
    for name, tags in names:
        if name in (".", "..") or len(name.encode()) > 200 or name.startswith(".") \
                or name.strip() != name or not name.lower().endswith((".png", ".jpg", ".tif")):
            continue
        (train / name).write_bytes(b"")
        made[name] = tags
    if not made:
        return
    try:
        layout = find_bcss(root, require=("train",))
    except InputError as exc:
        bad = Path(exc.path).name
        assert bad in made and made[bad] is None, str(exc)
        return
    assert {p.name: t.tolist() for p, t in layout.train} == {
        n: t for n, t in made.items()}  # every file, its tags as named
    shutil.rmtree(root)


# -- BCSS masks ---------------------------------------------------------------------------------
@st.composite
def masks(draw) -> tuple[np.ndarray, str, str]:
    # height >= 2: lpd.wsi.images.read_mask squeezes a one-row RGB / LA image to (w, 3)
    h, w = draw(st.integers(2, 24)), draw(st.integers(1, 24))
    top = draw(st.sampled_from([4, 4, 5, 29, 255, 4095]))
    seed = draw(st.integers(0, 2**31))
    values = np.random.default_rng(seed).integers(0, top + 1, (h, w))
    mode = draw(st.sampled_from(["P", "L", "RGB", "RGB-colour", "I;16", "LA", "tiff8",
                                 "tiff16"]))
    fmt = "TIFF" if mode.startswith("tiff") else draw(st.sampled_from(["PNG", "TIFF"]))
    return values, mode, fmt


@settings(FUZZ, max_examples=120)
@given(case=masks())
def test_fuzz_bcss_masks(tmp_path, case) -> None:
    TRIED["BCSS masks"] += 1
    values, mode, fmt = case
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / ("mask.png" if fmt == "PNG" else "mask.tif")
    storable = values.max() <= (65535 if mode in ("I;16", "tiff16") else 255)
    if not storable:
        values = values % 256
    if mode == "tiff8":
        tifffile.imwrite(path, values.astype(np.uint8))
    elif mode == "tiff16":
        tifffile.imwrite(path, values.astype(np.uint16))
    elif mode == "P":  # as BCSS masks are saved: indices, with a palette
        img = Image.frombytes("P", values.shape[::-1], values.astype(np.uint8).tobytes())
        img.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
        img.save(path, fmt)
    elif mode == "L":
        Image.fromarray(values.astype(np.uint8), "L").save(path, fmt)
    elif mode == "I;16":
        Image.fromarray(values.astype(np.uint16)).save(path, fmt)
    elif mode == "LA":
        Image.fromarray(np.dstack([values, np.full_like(values, 255)]).astype(np.uint8),
                        "LA").save(path, fmt)
    else:
        rgb = np.dstack([values] * 3).astype(np.uint8)
        colour = mode == "RGB-colour" and values.size > 1 and values.max() > 0
        if colour:
            rgb[0, 0, 0] = (int(rgb[0, 0, 0]) + 1) % 256
        Image.fromarray(rgb, "RGB").save(path, fmt)
        if colour:
            with pytest.raises(InputError) as exc:
                read_bcss_mask(path)
            _names(exc.value, path)
            return
    try:
        labels = read_bcss_mask(path)
    except InputError as exc:
        _names(exc, path)
        assert values.max() > 4, f"refused a mask of class indices 0..4: {exc}"
        return
    assert values.max() <= 4, "read a mask holding values outside 0..4"
    np.testing.assert_array_equal(labels, BCSS_TO_LABEL[values.astype(np.uint8)])
