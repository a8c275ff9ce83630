"""The ``lpd_*`` keys the plugin writes into napari layers' ``metadata``, declared once.

Every field of ``LayerMeta`` is one key, ``"lpd_" + field name``; None means "not set"
(the key is left out). Which layers carry which keys:

- image layers opened by our reader or sample data: ``path``, ``mpp``, ``mpp_source``, ``reader``
  (``class_names`` and ``path`` on a label TIFF read as labels);
- result Labels layers (``napari_lpd._layers.store_labels_layer``, then the Segment widget):
  ``store``, ``complete``, ``class_names``, and from a segmentation ``image``, ``k``,
  ``prototypes``, ``image_scale``, ``image_translate``, ``checkpoint``, ``counts``; a run's
  layer while it is painted has ``complete=False`` only;
- the fine-tuned view (Fine-tune widget): ``checkpoint``;
- the prototype heatmap: ``prototype``, ``prototype_index``; the dominant-prototype map:
  ``dominant_k``, ``dominant_labels``.

The key strings are part of the plugin's interface (saved sessions, scripts and tests read
them): a field is never renamed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

PREFIX = "lpd_"


@dataclass(frozen=True)
class LayerMeta:
    """What the plugin records on a layer; see the module docstring for who writes what."""

    path: str | None = None  # the image file the layer was read from
    mpp: float | None = None  # µm per level-0 pixel of that file
    mpp_source: str | None = None  # where ``mpp`` comes from (a TIFF tag, the file name...)
    reader: str | None = None  # how the file was read: vendor and backend (tifffile/openslide)
    class_names: list[str] | None = None  # names of labels 1..C
    store: str | None = None  # the prediction store (zarr folder) the labels show
    complete: bool | None = None  # False: an unfinished run (never exported as a result)
    image: str | None = None  # the name of the image layer that was segmented
    k: int | None = None  # prototypes per class of the model
    prototypes: bool | None = None  # the store holds prototype maps
    image_scale: tuple[float, float] | None = None  # that image layer's (y, x) scale...
    image_translate: tuple[float, float] | None = None  # ...and translate, at the run
    checkpoint: str | None = None  # the checkpoint that made the labels
    counts: list[int] | None = None  # pixels per label 0..C
    prototype: str | None = None  # heatmap: the prototype's name, e.g. "TUM 2"
    prototype_index: int | None = None  # heatmap: its row in the class-major maps
    dominant_k: int | None = None  # dominant-prototype map: prototypes per class
    dominant_labels: dict[int, tuple[str, int]] | None = None  # label -> (class, 1..k)

    def to_metadata(self) -> dict[str, Any]:
        """The set fields as layer metadata: ``{"lpd_<field>": value}``, None left out.

        Returns
        -------
        dict
            For ``Layer.metadata`` (or ``metadata.update(...)``).
        """
        return {PREFIX + name: value for name, value in asdict(self).items()
                if value is not None}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> LayerMeta:
        """The ``lpd_*`` keys of a metadata mapping (others are ignored).

        Parameters
        ----------
        metadata : mapping or None
            A layer's ``metadata``, or the ``"metadata"`` of layer-data attributes.

        Returns
        -------
        LayerMeta
            Missing keys are None.
        """
        metadata = metadata or {}
        return cls(**{f.name: metadata.get(PREFIX + f.name) for f in fields(cls)})

    @classmethod
    def from_layer(cls, layer: Any) -> LayerMeta:
        """The ``lpd_*`` metadata of a napari layer (anything without metadata: all None).

        Parameters
        ----------
        layer : napari.layers.Layer
            Any layer.

        Returns
        -------
        LayerMeta
            Missing keys are None.
        """
        return cls.from_metadata(getattr(layer, "metadata", None))
