"""OME-NGFF metadata and array layout of the prediction store, for NGFF 0.5 (zarr v3, under
``attributes["ome"]``) and NGFF 0.4 (zarr v2, top-level ``.zattrs`` keys).

Layouts, by the store's ``format_version``:

- **1** (lpd before the NGFF labels layout): the label pyramid is the multiscale group
  ``labels/`` (``labels/0``, ``labels/1``, ...), no image and no ``labels`` list, so NGFF
  readers do not find it as labels. Still read and resumed in this layout.
- **2**: the root is an NGFF image group whose multiscale is a placeholder (no pixels
  stored: its levels are never written, so they read as the fill value 0) of the label
  pyramid's shapes; ``labels/`` holds ``{"labels": ["classes"]}``; ``labels/classes/`` is
  the label pyramid with ``image-label`` (colours, class names, source ``../../``).

Spec: OME-NGFF 0.5 and 0.4, sections "multiscales", "labels", "image-label"
(https://ngff.openmicroscopy.org/0.5/, https://ngff.openmicroscopy.org/0.4/)."""

from __future__ import annotations

from typing import Any

import zarr

#: The label image's name in the ``labels`` group (layout 2).
LABEL_NAME = "classes"
_V2_SEPARATOR = {"name": "v2", "separator": "/"}  # NGFF 0.4: nested chunk folders
_V2_BLOSC = {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 1}  # Bio-Formats reads it


def label_path(format_version: int) -> str:
    """The group holding the label pyramid's levels (``<path>/0``, ``<path>/1``, ...)."""
    return "labels" if format_version == 1 else f"labels/{LABEL_NAME}"


def new_level(group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...],
              dtype: str = "uint8", names: tuple[str, ...] = ("y", "x"),
              overwrite: bool = False) -> zarr.Array:
    """A level array of a multiscale: named dimensions (zarr v3) or, in a zarr v2 group,
    nested chunk keys, Blosc/zstd (what Bio-Formats reads) and ``_ARRAY_DIMENSIONS``."""
    if group.metadata.zarr_format == 2:
        return group.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, overwrite=overwrite,
            chunk_key_encoding=_V2_SEPARATOR, compressors=_V2_BLOSC,
            attributes={"_ARRAY_DIMENSIONS": list(names)},
        )
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                              dimension_names=names, overwrite=overwrite)


def _unit(meta: dict[str, Any]) -> float:
    """µm per level-0 slide pixel (level-0 pixels when the µm per pixel is unknown)."""
    return 1.0 if meta["mpp"] is None else meta["mpp"] / meta["scale"]


def _axes(meta: dict[str, Any], channel: bool = False) -> list[dict[str, str]]:
    unit = {"unit": "micrometer"} if meta["mpp"] else {}
    space = [{"name": a, "type": "space", **unit} for a in ("y", "x")]
    return [{"name": "c", "type": "channel"}, *space] if channel else space


def _transforms(meta: dict[str, Any], factor: float, channel: bool = False) -> list[dict]:
    """Scale and translation of an array whose pixel is ``factor`` level-0 slide pixels:
    napari's pixel-centre convention, in µm when known."""
    u = _unit(meta)
    oy, ox = meta["offset"]["y"], meta["offset"]["x"]
    scale = [factor * u, factor * u]
    shift = [(oy + 0.5 * factor - 0.5) * u, (ox + 0.5 * factor - 0.5) * u]
    if channel:
        scale, shift = [1.0, *scale], [0.0, *shift]
    return [{"type": "scale", "scale": scale}, {"type": "translation", "translation": shift}]


def multiscale(meta: dict[str, Any], name: str, version: str) -> dict[str, Any]:
    """The ``multiscales`` entry of the label pyramid (and of the image it belongs to):
    ``meta["levels"]`` levels ``0``, ``1``, ..., level l 2**l times coarser."""
    suffix = "" if meta["complete"] else " (incomplete)"
    entry: dict[str, Any] = {
        "name": name + suffix,
        "axes": _axes(meta),
        "datasets": [{"path": str(lv), "coordinateTransformations":
                      _transforms(meta, meta["scale"] * 2**lv)}
                     for lv in range(meta["levels"])],
        "type": "mode",
        "metadata": {"description": "2x2 majority label; ties go to the top-left pixel"},
    }
    return {"version": version, **entry} if version == "0.4" else entry


def image_label(meta: dict[str, Any], version: str, source: bool = True) -> dict[str, Any]:
    """``image-label``: an rgba colour and a ``class`` name for 0 (background, transparent)
    and each class 1..C; ``source`` the image group two levels up."""
    colours = [{"label-value": 0, "rgba": [0, 0, 0, 0]}] + [
        {"label-value": i + 1, "rgba": [*map(int, c), 255]}
        for i, c in enumerate(meta["class_colours"][: len(meta["class_names"])])
    ]
    props = [{"label-value": 0, "class": "background"}] + [
        {"label-value": i + 1, "class": n} for i, n in enumerate(meta["class_names"])
    ]
    out: dict[str, Any] = {"version": version, "colors": colours, "properties": props}
    if source:
        out["source"] = {"image": "../../"}
    return out


def prototype_multiscale(meta: dict[str, Any], version: str) -> dict[str, Any]:
    """The prototype maps' one-level multiscale (axes c, y, x)."""
    f = meta["scale"] * meta["prototypes"]["stride"]
    entry = {
        "name": "lpd prototypes" + ("" if meta["complete"] else " (incomplete)"),
        "axes": _axes(meta, channel=True),
        "datasets": [{"path": "0", "coordinateTransformations":
                      _transforms(meta, f, channel=True)}],
    }
    return {"version": version, **entry} if version == "0.4" else entry


def _omero(meta: dict[str, Any], placeholder: bool, version: str) -> dict[str, Any]:
    """Display settings of the image: the placeholder starts hidden; a class-map image
    (NGFF 0.4 copy) is shown over 0..C."""
    label = "no image pixels (placeholder)" if placeholder else "class (0 background, 1..C)"
    channel = {"label": label, "active": not placeholder, "color": "FFFFFF",
               "coefficient": 1, "family": "linear", "inverted": False,
               "window": {"min": 0, "max": 255, "start": 0,
                          "end": 1 if placeholder else len(meta["class_names"])}}
    out = {"name": "lpd prediction", "channels": [channel], "rdefs": {"model": "greyscale"}}
    return {"version": version, **out} if version == "0.4" else out


def write_metadata(group: zarr.Group, meta: dict[str, Any], version: str = "0.5") -> None:
    """Write the OME metadata of every group of a store in its layout (``meta``'s
    ``format_version``; 2 in the NGFF 0.4 copy, whose root image is the class map).

    Parameters
    ----------
    group : zarr.Group
        The store's root group (zarr v3 for "0.5", v2 for "0.4").
    meta : dict
        The store's ``lpd`` metadata (levels, classes, geometry, complete).
    version : str
        "0.5" (under ``ome``) or "0.4" (top-level keys, versions inside).
    """
    def put(node: zarr.Group, **keys: Any) -> None:
        if version == "0.5":
            node.attrs["ome"] = {"version": version, **keys}
        else:
            node.attrs.update(keys)

    labels = multiscale(meta, "lpd labels", version)
    if meta["format_version"] == 1:
        put(group["labels"], multiscales=[labels],
            **{"image-label": image_label(meta, version, source=False)})
    else:
        image_name = "lpd class map" if version == "0.4" else "lpd placeholder image"
        put(group, multiscales=[multiscale(meta, image_name, version)],
            omero=_omero(meta, version == "0.5", version))
        put(group["labels"], labels=[LABEL_NAME])
        put(group[label_path(2)], multiscales=[labels],
            **{"image-label": image_label(meta, version)})
    if meta.get("prototypes") and "prototypes" in group:
        put(group["prototypes"], multiscales=[prototype_multiscale(meta, version)])
