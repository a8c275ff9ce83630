"""Prototype explorer: per-prototype activation heatmaps of a segmentation, a "dominant
prototype" map, and a side-by-side (grid mode) comparison.

Works on a result Labels layer whose run computed prototype maps (``lpd_store`` metadata).
The heatmap is one Image layer, ``LPD prototype heatmap [<image>]``, created only when asked
for, whose content follows the class and prototype controls (slider updates are throttled
with superqt so dragging stays smooth). Values are the model's logits (temperature x
cosine) of the deepest scale, one cell per ``stride`` output pixels; contrast runs from
the 70th to the 99.5th percentile of the tissue cells (cells labelled background are set
to the lower limit), so additive blending lights up where the prototype responds most.

The dominant-prototype map numbers its labels class-major, ``(c - 1) * k + j`` for prototype
j of class c, and colours them with k shades of the class colour (``lpd.colours``), which
a legend in the widget lists; the layer's ``lpd_dominant_labels`` metadata maps each label
value to its (class, prototype)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import napari.viewer
import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import qthrottled

from lpd.classes import readable_colours
from lpd.colours import class_shades
from lpd.io.store import OutputStore
from lpd.io.store_tools import labels_at_cells
from lpd.viz import dominant_prototype
from napari_lpd._layers import (
    dominant_name,
    grid_transform,
    heatmap_name,
    remove_layers,
    store_image_frame,
    upsert_layer,
    watch_layers,
)
from napari_lpd._metadata import LayerMeta
from napari_lpd._parts import DominantLegend
from napari_lpd._workers import RunHandle, run_in_worker

COLORMAPS = ("inferno", "magma", "viridis", "turbo", "hot")
CACHE_BYTES = 256 * 2**20  # prototype maps smaller than this are read once into memory
# contrast of a heatmap: from this percentile of its tissue cells (the darkest 70 % add
# nothing in additive blending) to the brightest 0.5 %
LIMITS_PERCENTILES = (70, 99.5)


def grid_of(viewer: Any) -> Any:
    """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def result_layers(viewer: Any) -> list[Labels]:
    """Finished LPD result layers that carry prototype maps."""
    return [layer for layer in viewer.layers if isinstance(layer, Labels)
            and (meta := LayerMeta.from_layer(layer)).store and meta.complete
            and meta.prototypes]


def dominant_palette(
    class_names: Sequence[str], colours: Sequence[Sequence[int]], k: int
) -> dict[int, tuple[str, int, tuple[int, int, int]]]:
    """Label value of the dominant-prototype map -> (class, prototype 1..k, RGB colour).

    Prototype j of class c (both from 1) is label ``(c - 1) * k + j`` and gets the j-th of
    k shades of the class colour, lightest first.

    Parameters
    ----------
    class_names : sequence of str
        The classes, in label order.
    colours : sequence of RGB triples
        Their colours (retired defaults are swapped for readable ones).
    k : int
        Prototypes per class.

    Returns
    -------
    dict
        ``{label value: (class name, prototype, (r, g, b))}``.
    """
    colours = readable_colours(class_names, colours)
    return {c * k + j + 1: (name, j + 1, (int(r), int(g), int(b)))
            for c, (name, colour) in enumerate(zip(class_names, colours, strict=True))
            for j, (r, g, b) in enumerate(class_shades(colour, k))}


def palette_colormap(palette: dict[int, tuple[str, int, tuple[int, int, int]]]) -> Any:
    """A napari Labels colormap of a ``dominant_palette``; 0 and other values clear."""
    clear = (0.0, 0.0, 0.0, 0.0)
    color_dict: dict[int | None, Any] = {0: clear, None: clear}
    for value, (_, _, rgb) in palette.items():
        color_dict[value] = (*(v / 255 for v in rgb), 1.0)
    return DirectLabelColormap(color_dict=color_dict)


class PrototypeWidget(QWidget):
    """Dock widget: explore the k prototypes of each class."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.store: OutputStore | None = None
        self.k = 1
        self._maps: np.ndarray | None = None  # (P, h, w) float32 when small enough
        self._cells: np.ndarray | None = None  # labels at the prototype cells
        self._hidden: list[Any] = []  # layers hidden by the side-by-side view
        self._grid_before: tuple[int, tuple[int, int]] | None = None
        self.handle: RunHandle | None = None
        form = QFormLayout()
        self.result_combo = QComboBox()
        self.result_combo.currentTextChanged.connect(self._result_changed)
        form.addRow("Result", self.result_combo)
        self.class_combo = QComboBox()
        form.addRow("Class", self.class_combo)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setMinimum(1)
        self.slider_label = QLabel("1")
        form.addRow("Prototype", self.slider)
        form.addRow("", self.slider_label)
        self.colormap_combo = QComboBox()
        self.colormap_combo.addItems(COLORMAPS)
        form.addRow("Colormap", self.colormap_combo)
        self.show_check = QCheckBox("Show heatmap")
        form.addRow("", self.show_check)
        self.dominant_button = QPushButton("Dominant prototype map")
        self.dominant_button.clicked.connect(self.show_dominant)
        self.side_button = QPushButton("Side by side")
        self.side_button.setCheckable(True)
        self.side_button.toggled.connect(self.side_by_side)
        self.legend = DominantLegend()
        self.legend.setVisible(False)  # shown with the first dominant-prototype map
        self.status = QLabel("Segment with “Compute prototype maps” ticked to explore them.")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.dominant_button)
        layout.addWidget(self.legend)
        layout.addWidget(self.side_button)
        layout.addWidget(self.status)
        layout.addStretch(1)
        # a slider drag emits dozens of values a second: redraw at most every 100 ms
        self._throttled = qthrottled(self.update_heatmap, timeout=100, parent=self)
        self.slider.valueChanged.connect(self._slider_moved)
        self.class_combo.currentIndexChanged.connect(lambda _: self._throttled())
        self.colormap_combo.currentTextChanged.connect(lambda _: self._throttled())
        self.show_check.toggled.connect(lambda _: self.update_heatmap())
        watch_layers(viewer, self.refresh_results)
        self.refresh_results()

    # ---- result selection -----------------------------------------------------------
    def refresh_results(self, event: Any = None) -> None:
        current = self.result_combo.currentText()
        known = {self.result_combo.itemText(i) for i in range(self.result_combo.count())}
        names = [layer.name for layer in result_layers(self.viewer)]
        new = [n for n in names if n not in known]
        if new:  # a run just finished (results are kept side by side): show the newest
            current = new[-1]
        self.result_combo.blockSignals(True)
        self.result_combo.clear()
        self.result_combo.addItems(names)
        if current in names:
            self.result_combo.setCurrentText(current)
        self.result_combo.blockSignals(False)
        layer = self.result
        stale = self.store is None or (layer is not None and Path(
            LayerMeta.from_layer(layer).store or "") != Path(self.store.path))
        if self.result_combo.currentText() != current or stale:
            self._result_changed(self.result_combo.currentText())

    @property
    def result(self) -> Labels | None:
        name = self.result_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _result_changed(self, name: str) -> None:
        layer = self.result
        self.store, self._maps, self._cells = None, None, None
        if layer is None:
            return
        meta = LayerMeta.from_layer(layer)
        store = OutputStore.open(Path(meta.store or ""))
        if store.prototypes is None:
            return
        self.store = store
        self.k = int(meta.k or store.prototypes.shape[0] // len(store.class_names))
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_combo.addItems(store.class_names)
        self.class_combo.blockSignals(False)
        self.slider.setMaximum(self.k)
        protos = store.prototypes
        if protos.size * 4 <= CACHE_BYTES:
            self._maps = np.asarray(protos[...], dtype=np.float32)
        self.status.setText(f"{len(store.class_names)} classes × {self.k} prototypes.")
        if self.show_check.isChecked():
            self.update_heatmap()

    # ---- heatmap --------------------------------------------------------------------
    def _slider_moved(self, value: int) -> None:
        self.slider_label.setText(str(value))
        self._throttled()

    @property
    def prototype_index(self) -> int:
        """Row of the chosen prototype in the class-major prototype maps."""
        return self.class_combo.currentIndex() * self.k + self.slider.value() - 1

    def _image_name(self) -> str:
        layer = self.result
        return str(LayerMeta.from_layer(layer).image or layer.name) if layer else ""

    def _frame(self, factor: float) -> tuple[tuple[float, float], tuple[float, float]]:
        layer, store = self.result, self.store
        assert layer is not None and store is not None
        meta = LayerMeta.from_layer(layer)
        scale, translate = meta.image_scale, meta.image_translate
        if scale is None or translate is None:
            scale, translate = store_image_frame(store)
        return grid_transform(scale, translate, store.scale, store.offset, factor)

    def heatmap(self, index: int) -> np.ndarray:
        assert self.store is not None and self.store.prototypes is not None
        if self._maps is not None:
            return self._maps[index]
        return np.asarray(self.store.prototypes[index], dtype=np.float32)

    def update_heatmap(self) -> None:
        """Show (or remove, when unticked) the heatmap of the chosen prototype."""
        name = heatmap_name(self._image_name())
        if not self.show_check.isChecked() or self.store is None:
            remove_layers(self.viewer, [name])
            return
        store = self.store
        assert store.prototypes is not None
        index = self.prototype_index
        data = self.heatmap(index)
        mask = self._tissue_cells()
        values = data[mask] if mask.any() else data.ravel()
        low, high = (float(v) for v in np.percentile(values, LIMITS_PERCENTILES))
        limits = (low, high if high > low else low + 1e-3)
        if mask.any() and not mask.all():
            data = np.where(mask, data, np.float32(low))  # off tissue: adds nothing
        proto_name = store.meta["prototypes"]["names"][index]
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if isinstance(layer, Image) and layer.data.shape == data.shape:
            layer.data = data  # same layer, new content: no flicker, keeps its place
            layer.contrast_limits = limits
            layer.colormap = self.colormap_combo.currentText()
        else:
            stride = float(store.meta["prototypes"]["stride"])
            scale, translate = self._frame(stride)
            layer = upsert_layer(self.viewer, data, {
                "name": name, "colormap": self.colormap_combo.currentText(),
                "blending": "additive", "contrast_limits": limits, "opacity": 0.8,
                "scale": scale, "translate": translate, "interpolation2d": "linear",
                "units": tuple(self.result.units),
            }, "image")
        layer.metadata.update(LayerMeta(prototype=proto_name,
                                        prototype_index=index).to_metadata())
        self.status.setText(f"Heatmap of prototype {proto_name} (logit {low:.2f}–{high:.2f}).")

    def _tissue_cells(self) -> np.ndarray:
        store = self.store
        assert store is not None and store.prototypes is not None
        if self._cells is None:
            stride = float(store.meta["prototypes"]["stride"])
            self._cells = labels_at_cells(store, stride, store.prototypes.shape[-2:])
        return self._cells > 0

    # ---- dominant prototype ---------------------------------------------------------
    def show_dominant(self) -> RunHandle | None:
        """Compute the dominant-prototype map in a worker and show it as Labels."""
        if self.store is None:
            show_info("No segmentation with prototype maps yet.")
            return None
        store, k, maps = self.store, self.k, self._maps
        stride = float(store.meta["prototypes"]["stride"])
        cells = self._tissue_cells()  # computed here: cached for the heatmap too
        labels = self._cells
        assert labels is not None and store.prototypes is not None
        shape = store.prototypes.shape
        palette = dominant_palette(store.class_names, store.class_colours, k)

        def job():
            out = np.zeros(labels.shape, np.uint8 if len(palette) < 256 else np.uint16)
            band = max(1, store.chunk // int(stride))
            for y in range(0, shape[1], band):
                block = maps[:, y : y + band] if maps is not None else \
                    np.asarray(store.prototypes[:, y : y + band], np.float32)
                classes = labels[y : y + band]
                j = dominant_prototype(classes, block, k)
                # prototype j of class c -> (c - 1) * k + j: each class its own labels
                out[y : y + band] = np.where(j > 0, (classes.astype(np.int64) - 1) * k + j, 0)
                yield y + band, shape[1]
            return out

        scale, translate = self._frame(stride)
        name = dominant_name(self._image_name())
        units = tuple(self.result.units)

        def done(out: np.ndarray) -> None:
            upsert_layer(self.viewer, out, {
                "name": name, "scale": scale, "translate": translate, "opacity": 0.7,
                "units": units, "colormap": palette_colormap(palette),
                "metadata": LayerMeta(dominant_k=k, dominant_labels={
                    value: (cls_name, j) for value, (cls_name, j, _) in palette.items()},
                ).to_metadata(),
            }, "labels")
            self.legend.set_palette(palette)
            self.legend.setVisible(True)
            self.status.setText(f"Dominant prototype map: the strongest of the {k} prototypes "
                                f"of the class predicted there, in shades of the class "
                                f"colour (legend); {int(cells.sum())} cells.")

        self.handle = run_in_worker(job, description="LPD dominant prototypes",
                                    total=lambda v: v[1], done=lambda v: min(v[0], v[1]),
                                    on_return=done, owner=self)
        return self.handle

    # ---- side by side ---------------------------------------------------------------
    def side_by_side(self, on: bool) -> None:
        """Grid mode with the image, the labels and the heatmap, one per cell. napari's
        grid is one canvas with one camera, so panning and zooming stay linked."""
        viewer = self.viewer
        if not on:
            for layer in self._hidden:
                if layer in viewer.layers:
                    layer.visible = True
            self._hidden = []
            grid = grid_of(viewer)
            grid.enabled = False
            if self._grid_before is not None:
                grid.stride, grid.shape = self._grid_before
                self._grid_before = None
            return
        layer = self.result
        if layer is None:
            show_info("No segmentation with prototype maps yet.")
            self.side_button.setChecked(False)
            return
        if not self.show_check.isChecked():
            self.show_check.setChecked(True)  # creates the heatmap
        image = LayerMeta.from_layer(layer).image
        keep = {layer.name, heatmap_name(self._image_name()), image}
        self._hidden = [lyr for lyr in viewer.layers if lyr.visible and lyr.name not in keep]
        for lyr in self._hidden:
            lyr.visible = False
        for lyr in viewer.layers:
            if lyr.name in keep:
                lyr.visible = True
        grid = grid_of(viewer)
        self._grid_before = (grid.stride, grid.shape)
        grid.stride = 1  # layer-list order: image, labels, heatmap from left to right
        grid.shape = (1, sum(1 for lyr in viewer.layers if lyr.visible))
        grid.enabled = True
