"""The OpenSlide backend (lpd.wsi._openslide) and the routing between backends
(lpd.wsi._routing, lpd.wsi.slide.open_slide): the bundled SVS slides through both backends,
a generated Leica SCN (a real OpenSlide read with bounds), the routing and the bounds
arithmetic against recorded OpenSlide property sets of the other formats
(tests/data/openslide_properties.json, no slide files needed), a real DICOM-WSI converted
from the bundled CMU-1 region (tests/data/dicom-cmu-1-small-region), and a missing
OpenSlide."""

from __future__ import annotations

import base64
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from lpd.data.sample import CMU_SLIDE, TCGA_SLIDE
from lpd.errors import InputError
from lpd.wsi import _openslide as osb
from lpd.wsi import _routing as routing
from lpd.wsi.slide import is_dicom_folder, open_slide

openslide = pytest.importorskip("openslide")
pytestmark = pytest.mark.usefixtures("quiet_tifffile")

RECORDED = json.loads((Path(__file__).parents[1] / "data" / "openslide_properties.json")
                      .read_text(encoding="utf-8"))
CASES = {k: v for k, v in RECORDED.items() if not k.startswith("_")}
NM_PER_PX = 500  # the generated SCN: 0.5 µm/px


def _diff(a: np.ndarray, b: np.ndarray) -> tuple[int, np.ndarray]:
    """(max |a - b|, mean |a - b| per channel)."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(d.max()), d.reshape(-1, 3).mean(axis=0)


def _same_pixels(a: np.ndarray, b: np.ndarray) -> None:
    """The tolerance of two JPEG decoders: max |Δ| <= 2, mean <= 0.5 per channel."""
    assert a.shape == b.shape
    top, mean = _diff(a, b)
    assert top <= 2 and (mean <= 0.5).all(), (top, mean)


# ------------------------------------------------------------- routing (recorded sets)
@pytest.mark.parametrize("case", [k for k, v in CASES.items() if v.get("backend")])
def test_routing_of_recorded_formats(case):
    c = CASES[case]
    vendor = c["properties"]["openslide.vendor"]
    got = routing.choose_backend(vendor, c["head"] == "tiff", c["head"] == "dicom",
                                 Path(c["file"]).suffix.lower())
    assert got == c["backend"], (case, vendor)


def test_routing_without_openslide_knowing_the_file():
    assert routing.choose_backend(None, True) == "tifffile"  # OME-TIFF, any TIFF
    assert routing.choose_backend(None, False) == "plain"  # PNG, JPEG
    assert routing.choose_backend(None, False, suffix=".mrxs") == "openslide"  # says why not
    assert routing.choose_backend(None, False, is_dicom=True) == "openslide"
    assert routing.choose_backend("hamamatsu", True) == "tifffile"  # NDPI
    assert routing.choose_backend("hamamatsu", False) == "openslide"  # VMS / VMU
    assert routing.choose_backend("sakura", False) == "openslide"  # tifffile can't


# ------------------------------------------------------ bounds arithmetic (recorded sets)
@pytest.mark.parametrize("case", [k for k, v in CASES.items() if "expect" in v])
def test_geometry_of_recorded_property_sets(case):
    c, want = CASES[case], CASES[case]["expect"]
    levels, bounds = osb.slide_geometry(c["properties"])
    assert bounds == want["bounds"]
    assert [list(g.shape) for g in levels] == want["shapes"]
    assert [g.downsample for g in levels] == want["downsamples"]
    for level, y, x, location in want.get("locations", []):
        assert osb.level_location(levels[level], bounds, y, x) == tuple(location)
    full, _ = osb.slide_geometry(c["properties"], crop=False)
    n = int(c["properties"]["openslide.level-count"])
    assert [g.shape for g in full] == [
        (int(c["properties"][f"openslide.level[{k}].height"]),
         int(c["properties"][f"openslide.level[{k}].width"])) for k in range(n)]


def test_bounds_that_are_empty_or_the_whole_frame_are_ignored():
    base = {"openslide.level-count": "1", "openslide.level[0].width": "1000",
            "openslide.level[0].height": "800"}
    for x, y, w, h in [(0, 0, 0, 0), (0, 0, 1000, 800), (5, 5, -1, 10)]:  # mirax: no images
        props = {**base, "openslide.bounds-x": str(x), "openslide.bounds-y": str(y),
                 "openslide.bounds-width": str(w), "openslide.bounds-height": str(h)}
        levels, bounds = osb.slide_geometry(props)
        assert bounds is None and levels[0].shape == (800, 1000)
    props = {**base, "openslide.bounds-x": "900", "openslide.bounds-y": "0",
             "openslide.bounds-width": "500", "openslide.bounds-height": "800"}
    assert osb.slide_geometry(props)[1] == {"x": 900, "y": 0, "width": 100, "height": 800}


class _RecordedSlide:
    """Stands in for ``openslide.OpenSlide`` with a recorded property set: pixel (i, j) of a
    read at ``location`` is (x + j, y + i, level) mod 256; the read's first pixel is
    transparent."""

    def __init__(self, props: dict) -> None:
        self.properties, self.calls = props, []

    def read_region(self, location, level, size):
        self.calls.append((location, level, size))
        (x, y), (w, h) = location, size
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., 0] = ((x + np.arange(w)) % 256)[None, :]
        rgba[..., 1] = ((y + np.arange(h)) % 256)[:, None]
        rgba[..., 2], rgba[..., 3] = level, 255
        rgba[0, 0, 3] = 0  # transparent: composited on white
        return Image.fromarray(rgba, "RGBA")

    def close(self) -> None:
        pass


def test_reads_go_to_the_bounds_offset_in_fixed_blocks():
    props = CASES["argos-1"]["properties"]
    fake = _RecordedSlide(props)
    slide = osb.slide_from_openslide(fake, Path("Argos-1.avs"))
    assert slide.metadata["bounds"] == {"x": 25600, "y": 5632, "width": 98816,
                                        "height": 41472}
    assert slide.shape == (41472, 98816) and slide.downsamples[3] == 8.0
    region = slide.read_region(0, 1000, 3000, 4, 4)
    block = slide.levels[0].chunksize[:2]
    assert fake.calls[-1][0] == (25600 + 3000 // block[1] * block[1],
                                 5632 + 1000 // block[0] * block[0])
    # slide pixel (y, x) is OpenSlide's (bounds-y + y, bounds-x + x)
    assert tuple(region[1, 1]) == ((25600 + 3001) % 256, (5632 + 1001) % 256, 0)
    first = slide.read_region(0, 0, 0, 2, 2)
    assert tuple(first[0, 0]) == (255, 255, 255)  # transparent -> white
    assert tuple(first[1, 1]) == ((25600 + 1) % 256, (5632 + 1) % 256, 0)
    # one pixel is the same whatever region it is read with (blocks, not the request)
    a = slide.read_region(3, 500, 700, 40, 40)[10, 10]
    b = slide.read_region(3, 505, 703, 10, 10)[5, 7]
    assert (a == b).all() and a[2] == 3
    d3 = float(props["openslide.level[3].downsample"])
    assert fake.calls[-1][1] == 3 and fake.calls[-1][0][0] == 25600 + round(
        700 // slide.levels[3].chunksize[1] * slide.levels[3].chunksize[1] * d3)


# ----------------------------------------------------- the bundled SVS, both backends
def test_svs_level0_through_both_backends():
    for path, regions in [(CMU_SLIDE, [(0, 0, 300, 400), (1200, 700, 512, 256),
                                       (2900, 2100, 67, 120)]),
                          (TCGA_SLIDE, [(0, 0, 256, 256), (1500, 2000, 400, 300)])]:
        with open_slide(path) as a, open_slide(path, backend="openslide") as b:
            assert a.metadata["backend"] == "tifffile" and b.metadata["backend"] == "openslide"
            assert b.vendor == a.vendor == "aperio"
            assert b.shape == a.shape and b.downsamples == a.downsamples
            assert b.mpp == a.mpp
            for y, x, h, w in regions:
                _same_pixels(a.read_region(0, y, x, h, w), b.read_region(0, y, x, h, w))


def _bilinear(img: np.ndarray, fy: float, fx: float) -> np.ndarray:
    """``img`` sampled at (i + fy, j + fx), bilinear, edges clamped."""
    h, w = img.shape[:2]
    ys, xs = np.arange(h) + fy, np.arange(w) + fx
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    y0, y1 = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
    x0, x1 = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
    f = img.astype(np.float64)
    top = f[y0][:, x0] * (1 - wx) + f[y0][:, x1] * wx
    bottom = f[y1][:, x0] * (1 - wx) + f[y1][:, x1] * wx
    return np.rint(top * (1 - wy) + bottom * wy).astype(np.uint8)


def test_svs_lowest_level_through_both_backends():
    """The TCGA slide's level 1 has OpenSlide downsample 2.0005 (level sizes rounded): a
    block of it is OpenSlide's level shifted by the fraction ``location / d - start``,
    resampled bilinearly. It is tifffile's level so shifted; exactly tifffile's at 0, 0."""
    with open_slide(TCGA_SLIDE) as a, open_slide(TCGA_SLIDE, backend="openslide") as b:
        assert b.metadata["subpixel_levels"] == [1] and b.downsamples == [1.0, 2.0]
        bh, bw = b.levels[1].chunksize[:2]
        d = b.metadata["openslide_downsamples"][1]
        _same_pixels(b.read_region(1, 0, 0, 200, 200), a.read_region(1, 0, 0, 200, 200))
        for y0, x0 in [(bh, bw), (2 * bh, 3 * bw)]:
            fy, fx = round(y0 * d) / d - y0, round(x0 * d) / d - x0  # |f| < 0.5
            ref = a.read_region(1, y0 - 1, x0 - 1, 152, 152)  # a pixel of margin
            want = _bilinear(ref, fy, fx)[1:151, 1:151]
            _same_pixels(b.read_region(1, y0, x0, 150, 150), want)


# ------------------------------------------------------- a generated Leica SCN (real read)
def write_leica_scn(path: Path, offset: tuple[int, int], frame=(1536, 2048)) -> np.ndarray:
    """A Leica SCN (BigTIFF, 2010/10/01 XML) with one 768 x 1024 brightfield image at
    ``offset`` (y, x) px inside a ``frame`` collection, two levels, 0.5 µm/px. Returns the
    level-0 image as written (before JPEG)."""
    yy, xx = np.mgrid[0:768, 0:1024]
    main = np.stack([xx * 255 // 1023, yy * 255 // 767, np.full_like(xx, 128)], -1)
    main = main.astype(np.uint8)
    main[100:300, 200:500] = (200, 40, 90)
    half = np.asarray(Image.fromarray(main).resize((512, 384), Image.BILINEAR))
    barcode = base64.b64encode(b"LPD-TEST").decode()
    xml = (f'<?xml version="1.0" encoding="utf-8"?><scn xmlns="http://www.leica-microsystems'
           f'.com/scn/2010/10/01"><collection name="generated" uuid="1" sizeX='
           f'"{frame[1] * NM_PER_PX}" sizeY="{frame[0] * NM_PER_PX}"><barcode>{barcode}'
           f'</barcode><image name="main" uuid="2"><creationDate>2024-01-01T00:00:00Z'
           f'</creationDate><device model="lpd-test" version="1"/><pixels sizeX="1024" '
           f'sizeY="768"><dimension sizeX="1024" sizeY="768" r="0" ifd="0"/><dimension '
           f'sizeX="512" sizeY="384" r="1" ifd="1"/></pixels><view sizeX="{1024 * NM_PER_PX}"'
           f' sizeY="{768 * NM_PER_PX}" offsetX="{offset[1] * NM_PER_PX}" offsetY='
           f'"{offset[0] * NM_PER_PX}" spacingZ="0"/><scanSettings><objectiveSettings>'
           f'<objective>20</objective></objectiveSettings><illuminationSettings>'
           f'<numericalAperture>0.7</numericalAperture><illuminationSource>brightfield'
           f'</illuminationSource></illuminationSettings></scanSettings></image>'
           f'</collection></scn>')
    res = dict(resolution=(1e7 / NM_PER_PX, 1e7 / NM_PER_PX), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(main, tile=(256, 256), compression="jpeg", photometric="rgb",
                 description=xml, metadata=None, **res)
        tw.write(half, tile=(256, 256), compression="jpeg", photometric="rgb",
                 metadata=None, **res)
    return main


def test_leica_scn_is_cropped_to_its_bounds(tmp_path):
    path = tmp_path / "generated.scn"
    write_leica_scn(path, offset=(192, 320))
    with tifffile.TiffFile(path) as tif:  # the image as stored (JPEG decoded)
        stored = [p.asarray() for p in tif.pages]
    with open_slide(path) as slide:
        assert slide.metadata["backend"] == "openslide" and slide.vendor == "leica"
        assert slide.metadata["bounds"] == {"x": 320, "y": 192, "width": 1024, "height": 768}
        assert slide.metadata["full_size"] == [1536, 2048]
        assert slide.shape == (768, 1024) and slide.downsamples == [1.0, 2.0]
        assert slide.mpp == pytest.approx(0.5) and slide.metadata["objective_power"] == 20
        assert slide.metadata["subpixel_levels"] == []  # offsets are multiples of 2
        # slide pixel (y, x) is the image's (y, x): QuPath's coordinates, not the frame's
        _same_pixels(slide.levels[0].compute(), stored[0])
        _same_pixels(slide.levels[1].compute(), stored[1])
    recorded = CASES["leica-generated"]["properties"]
    with openslide.OpenSlide(str(path)) as osr:
        for key in ("openslide.bounds-x", "openslide.bounds-y", "openslide.level[1].width",
                    "openslide.vendor", "openslide.mpp-x"):
            assert osr.properties[key] == recorded[key]


def test_leica_scn_odd_offset_and_forced_tifffile(tmp_path):
    path = tmp_path / "odd.scn"
    write_leica_scn(path, offset=(101, 77))
    with tifffile.TiffFile(path) as tif:
        stored = tif.pages[0].asarray()
    with open_slide(path) as slide:
        assert slide.metadata["bounds"]["x"] == 77 and slide.shape == (768, 1024)
        assert slide.metadata["subpixel_levels"] == [1]  # 77 / 2: OpenSlide resamples
        _same_pixels(slide.read_region(0, 150, 250, 100, 200), stored[150:250, 250:450])
        level = pickle.loads(pickle.dumps(slide.levels[0]))  # reopens in a "worker"
        _same_pixels(level[:64, :64].compute(), slide.read_region(0, 0, 0, 64, 64))
    with open_slide(path, backend="tifffile") as raw:  # tifffile: the image directories
        assert raw.metadata["backend"] == "tifffile" and raw.shape == (768, 1024)


# ---------------------------------------------------------------- DICOM-WSI, real
@pytest.fixture(scope="module")
def cmu_dicom() -> Path:
    """The bundled CMU-1 region as a real DICOM-WSI series (converted by wsidicomizer;
    tests/data/dicom-cmu-1-small-region/README.md says how)."""
    return Path(__file__).resolve().parents[1] / "data" / "dicom-cmu-1-small-region"


def test_dicom_folder_and_file(cmu_dicom):
    assert is_dicom_folder(cmu_dicom) and not is_dicom_folder(CMU_SLIDE)
    with open_slide(CMU_SLIDE) as svs, open_slide(cmu_dicom) as dcm:
        assert dcm.metadata["backend"] == "openslide" and dcm.vendor == "dicom"
        assert dcm.path == cmu_dicom and Path(dcm.metadata["opened_file"]).parent == cmu_dicom
        assert dcm.shape == svs.shape and dcm.mpp == pytest.approx(0.499)
        for y, x in [(0, 0), (1500, 1000)]:
            _same_pixels(dcm.read_region(0, y, x, 300, 300), svs.read_region(0, y, x, 300, 300))
    one = sorted(cmu_dicom.glob("*.dcm"))[-1]
    with open_slide(one) as dcm:  # any file of the series opens the slide
        assert dcm.metadata["backend"] == "openslide" and dcm.shape == (2967, 2220)
    with pytest.raises(InputError, match="not a TIFF"):
        open_slide(one, backend="tifffile")


# ----------------------------------------------------------------- errors, no OpenSlide
def test_folders_and_backend_names(tmp_path):
    (tmp_path / "notes.txt").write_text("no slide here")
    with pytest.raises(InputError, match="folder"):
        open_slide(tmp_path)
    with pytest.raises(ValueError, match="backend"):
        open_slide(CMU_SLIDE, backend="vips")
    mrxs = tmp_path / "slide.mrxs"
    mrxs.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 200)  # no Slidedat.ini beside it
    with pytest.raises(InputError, match="OpenSlide") as info:
        open_slide(mrxs)
    assert "slide.mrxs" in str(info.value)


def test_missing_openslide_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide -> ImportError
    vms = tmp_path / "slide.vms"
    vms.write_text("[Virtual Microscope Specimen]\nNoLayers=1\n")
    for path, backend in [(vms, "auto"), (CMU_SLIDE, "openslide")]:
        with pytest.raises(InputError, match="pip install openslide-bin openslide-python"):
            open_slide(path, backend=backend)
    with open_slide(CMU_SLIDE) as slide:  # TIFFs still open, with tifffile
        assert slide.metadata["backend"] == "tifffile"


def test_closed_slide_refuses_reads():
    slide = open_slide(CMU_SLIDE, backend="openslide")
    level = slide.levels[0]
    slide.close()
    with pytest.raises(ValueError, match="closed"):
        level[:10, :10].compute()
