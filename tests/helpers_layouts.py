"""Test helper: prediction stores in the layout older lpd wrote (``format_version`` 1), for the
tests that old stores still open, resume and export (core and plugin tests)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def as_v1_layout(path: str | Path) -> Path:
    """Rewrite a closed store of the current layout, in place, as lpd wrote it before the
    NGFF labels layout: the label levels in ``labels/0``, ``labels/1``, ..., the group
    ``labels/`` itself the multiscale (name, axes, datasets) with ``image-label`` (version,
    colors, properties), no image at the root and ``format_version`` 1. Works on files
    only (zarr v3 JSON), so it does not depend on the store code it tests."""
    path = Path(path)
    root_json = path / "zarr.json"
    root = json.loads(root_json.read_text())
    meta = root["attributes"]["lpd"]
    assert meta["format_version"] == 2, "expects a store of the current layout"
    labels_dir = path / "labels"
    ome = json.loads((labels_dir / "classes" / "zarr.json").read_text())["attributes"]["ome"]
    for lv in range(meta["levels"]):
        shutil.rmtree(path / str(lv))  # the placeholder image
        os.replace(labels_dir / "classes" / str(lv), labels_dir / str(lv))
    shutil.rmtree(labels_dir / "classes")
    ms = {k: ome["multiscales"][0][k] for k in ("name", "axes", "datasets")}
    label = {k: ome["image-label"][k] for k in ("version", "colors", "properties")}
    group = json.loads((labels_dir / "zarr.json").read_text())
    group["attributes"] = {"ome": {"version": "0.5", "multiscales": [ms], "image-label": label}}
    (labels_dir / "zarr.json").write_text(json.dumps(group))
    del root["attributes"]["ome"]
    meta["format_version"] = 1
    root_json.write_text(json.dumps(root))
    return path
