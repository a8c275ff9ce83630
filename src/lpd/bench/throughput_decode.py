"""The decoding limit, for ``lpd bench throughput``: a generated SVS-like slide
(``bench_slide``) and its level's JPEG tiles decoded by a plain thread pool of
``imagecodecs.jpeg_decode`` calls (``decode_limit``; the tiles' bytes read with
``os.pread`` at the TIFF page's offsets, not through lpd's reader), with the number of
threads the pipeline decodes with. Given in windows per second: decoded level pixels per
second over the pixels of one output tile (``input_size - 2 * halo`` squared), since each
window adds one output tile of new pixels."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SVS_TILE = 240  # Aperio's tile size
SVS_QUALITY = 80


def bench_slide(path: Path, side: int, seed: int, mpp: float = 0.5) -> dict:
    """Write (or reuse) a JPEG pyramid of synthetic tissue with 240 px tiles.

    Parameters
    ----------
    path : Path
        Where the TIFF goes (kept when it exists: the same slide for several runs).
    side : int
        Level-0 size, px (square).
    seed : int
        The synthetic tissue's seed (``lpd.data.pyramid.write_synthetic_pyramid``).
    mpp : float
        Level-0 µm per px.

    Returns
    -------
    dict
        Path, side, seed, mpp, tile, JPEG quality and ``write_seconds``.
    """
    from lpd.data.pyramid import write_synthetic_pyramid

    t0 = time.perf_counter()
    if not path.exists():
        write_synthetic_pyramid(path, (side, side), tile=SVS_TILE, seed=seed, mpp=mpp,
                                quality=SVS_QUALITY)
    return {"path": str(path), "side": side, "seed": seed, "mpp": mpp, "tile": SVS_TILE,
            "quality": SVS_QUALITY, "write_seconds": time.perf_counter() - t0}


def _jpeg_level(path: Path, level: int) -> dict:
    """Offsets, byte counts and decode arguments of one pyramid level's JPEG tiles."""
    import tifffile
    from tifffile.tifffile import jpeg_decode_colorspace

    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[level].keyframe
        if int(page.compression) != 7:
            raise ValueError(f"{path}: level {level} is not JPEG-compressed")
        colorspace, outcolorspace = jpeg_decode_colorspace(
            int(page.photometric), int(page.planarconfig), tuple(page.extrasamples),
            bool(page.is_jfif))
        return {"offsets": list(page.dataoffsets), "counts": list(page.databytecounts),
                "tables": page.jpegtables, "colorspace": colorspace,
                "outcolorspace": outcolorspace, "shape": tuple(page.shape[:2]),
                "tile": (int(page.tilelength), int(page.tilewidth))}


def decode_limit(path: Path, level: int, threads: int, tile_px: int, repeats: int = 1) -> dict:
    """Decode every tile of ``level`` ``repeats`` times with ``threads`` threads (see the
    module docstring); the fastest repeat gives the figure.

    Parameters
    ----------
    path : Path
        A tiled JPEG TIFF (``bench_slide``).
    level, threads : int
        The pyramid level, the decoding threads.
    tile_px : int
        Output tile side (px): one window's worth of new pixels is ``tile_px ** 2``.
    repeats : int
        Passes over the level.

    Returns
    -------
    dict
        ``windows_per_s``, ``megapixels_per_s``, ``seconds`` (per pass), ``tiles``, ...
    """
    import imagecodecs

    info = _jpeg_level(path, level)
    fd = os.open(path, os.O_RDONLY)
    args = {"tables": info["tables"], "colorspace": info["colorspace"],
            "outcolorspace": info["outcolorspace"]}

    def one(k: int) -> int:
        data = os.pread(fd, info["counts"][k], info["offsets"][k])
        return imagecodecs.jpeg_decode(data, **args).size

    times, cpu = [], []
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(min(threads, len(info["counts"])))))  # warm-up
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                list(pool.map(one, range(len(info["counts"])), chunksize=4))
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    finally:
        os.close(fd)
    h, w = info["shape"]
    best = min(times)
    return {"level": level, "threads": threads, "tiles": len(info["counts"]),
            "file_tile": list(info["tile"]), "shape": [h, w], "repeats": repeats,
            "seconds": best, "seconds_all": times, "cpu_seconds": cpu[times.index(best)],
            "megapixels_per_s": h * w / best / 1e6,
            "windows": h * w / tile_px**2, "windows_per_s": h * w / tile_px**2 / best}
