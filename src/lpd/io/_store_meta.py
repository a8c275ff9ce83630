"""The prediction store's own metadata (``attributes["lpd"]`` of its root group): the key by
key check made on opening.

Private to ``lpd.io``; ``lpd.io.store`` re-exports what others use."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lpd.errors import InputError
from lpd.io._pyramid import pyramid_shapes


def check_version(path: str | Path, meta: dict[str, Any], latest: int) -> None:
    """Check a store's ``format_version``: a whole number >= 1, at most ``latest`` (this
    lpd's); raises ``InputError`` naming the store otherwise."""
    version = meta.get("format_version")
    if not whole(version, 1):
        raise InputError(path, f"format_version {version!r} is not a whole number >= 1")
    if version > latest:
        raise InputError(path, "written by a newer lpd; upgrade to read it")


def check_meta(path: str | Path, meta: dict[str, Any]) -> None:
    """Check a store's ``lpd`` metadata: every key the store reads, of the right type.

    Keys this version does not know are kept and ignored (a newer minor addition);
    ``fingerprint``, ``info``, ``prototypes`` and ``passes`` may be missing.

    Parameters
    ----------
    path : str or Path
        The store, named in the error.
    meta : dict
        The ``lpd`` attribute of its root group.

    Raises
    ------
    InputError
        Naming the store and the first key that is missing or wrong.
    """
    def bad(key: str, want: str) -> InputError:
        shown = repr(meta.get(key, "missing"))[:80]
        return InputError(path, f"damaged store metadata: {key} is {shown}, expected {want}")

    if not isinstance(meta.get("complete"), bool):
        raise bad("complete", "true or false")
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(whole(v, 1) for v in shape)):
        raise bad("shape", "[height, width] in pixels")
    for key in ("tile", "chunk", "levels"):
        if not whole(meta.get(key), 1):
            raise bad(key, "a whole number >= 1")
    if meta["chunk"] % meta["tile"]:
        raise bad("chunk", f"a multiple of the tile ({meta['tile']})")
    if meta["levels"] > len(pyramid_shapes(tuple(shape), meta["chunk"])):
        raise bad("levels", "at most the pyramid's levels")
    names, colours = meta.get("class_names"), meta.get("class_colours")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
            and len(set(names)) == len(names)):
        raise bad("class_names", "a list of distinct names")
    if not (isinstance(colours, list) and len(colours) >= len(names) and all(
            isinstance(c, list) and len(c) == 3 and all(whole(v, 0, 255) for v in c)
            for c in colours)):
        raise bad("class_colours", "an [r, g, b] (0..255) for every class")
    mpp = meta.get("mpp", "missing")
    if mpp is not None and not positive(mpp):
        raise bad("mpp", "a positive number or null")
    if not positive(meta.get("scale")):
        raise bad("scale", "a positive number")
    offset = meta.get("offset")
    if not (isinstance(offset, dict) and all(number(offset.get(k)) for k in ("x", "y"))):
        raise bad("offset", '{"x": number, "y": number}')
    protos = meta.get("prototypes")
    if protos is not None and not (
            isinstance(protos, dict) and whole(protos.get("count"), 1)
            and positive(protos.get("stride")) and isinstance(protos.get("names"), list)
            and len(protos["names"]) == protos["count"]):
        raise bad("prototypes", 'null or {"count", "stride", "names"}')
    for key in ("fingerprint", "info"):
        if not isinstance(meta.get(key, {}), dict):
            raise bad(key, "an object")
    if not whole(meta.get("passes", 0), 0):
        raise bad("passes", "a whole number >= 0")


def whole(value: Any, low: int, high: float = math.inf) -> bool:
    """An int (not a bool) in ``low..high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive(value: Any) -> bool:
    """A finite number > 0."""
    return number(value) and value > 0
