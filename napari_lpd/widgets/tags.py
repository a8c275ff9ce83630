"""Tag annotator: rectangles or grid cells of an image, with the classes present in each;
QuPath annotations imported as tagged polygons.

The image's ``lpd.data.tags.TagStore`` is the truth, mirrored by the "LPD tags" Shapes layer
(feature ``region_id``; shapes: ``napari_lpd._tag_shapes``). Each change is saved at once to
the image's sidecar (``lpd.data.tags.sidecar_path``), whose tags show again when the image
is opened; the last ``MAX_UNDO`` edits can be undone (Ctrl+Z). The class boxes edit the one
selected region, else they hold the classes of the next region. Grid mode
(``napari_lpd._tag_grid``): click cells of one model patch. "Import QuPath GeoJSON…": ``lpd.data.tags.import_annotations``."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import napari.viewer
import numpy as np
import pandas as pd
from napari.layers import Image, Shapes
from napari.utils.notifications import show_info, show_warning
from qtpy import QtWidgets as qw
from qtpy.QtCore import QSignalBlocker

from lpd.classes import CLASS_COLOURS, CLASS_LONG_NAMES, CLASS_NAMES
from lpd.data.tags import TagRegion, TagStore, import_annotations, iter_export, sidecar_path
from lpd.errors import InputError
from napari_lpd._layers import TaggedImage, layer_file, opened_pixels, tagged_image
from napari_lpd._notify import notify_error
from napari_lpd._parts import row_of
from napari_lpd._tag_grid import GRID_LAYER, MAX_GRID_CELLS, UNDO_KEY, GridMode
from napari_lpd._tag_shapes import add_region_shapes, apply_shape
from napari_lpd._workers import RunHandle, run_in_worker

__all__ = ["GRID_LAYER", "MAX_GRID_CELLS", "MAX_UNDO", "TAGS_LAYER", "UNDO_KEY",
           "TagAnnotatorWidget"]

TAGS_LAYER = "LPD tags"
MAX_UNDO = 20  # tag edits kept for Undo
_DONE_ACTIONS = ("added", "removed", "changed")  # not the "...ing" events of a drag
_UNTAGGED = (0.6, 0.6, 0.6, 1.0)
GEOJSON_FILTER = "QuPath GeoJSON (*.geojson *.geojson.gz *.json);;All files (*)"


class TagAnnotatorWidget(GridMode, qw.QWidget):
    """Dock widget: tag regions of an image with the classes present in them."""

    image: TaggedImage | None = None
    store: TagStore | None = None
    shapes: Shapes | None = None  # "LPD tags"
    _syncing = False  # True while we change the shapes ourselves

    def __init__(self, viewer: napari.viewer.Viewer, parent: qw.QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._next_classes: set[str] = set()  # the boxes when not editing one region
        self._history: deque[list[TagRegion]] = deque(maxlen=MAX_UNDO)  # regions before
        self._build()
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
        self._refresh_images()

    def _build(self) -> None:
        form = qw.QFormLayout()
        self.image_combo = qw.QComboBox(currentTextChanged=self.set_image)
        form.addRow("Image", self.image_combo)
        self.patch_spin = qw.QSpinBox(minimum=16, maximum=4096, value=224, suffix=" px")
        self.mpp_spin = qw.QDoubleSpinBox(
            minimum=0.0, maximum=100.0, decimals=3, value=0.5, suffix=" µm/px",
            specialValueText="full resolution", toolTip="Magnification of grid cells and "
            "exported patches (the default model's: 0.5 µm/px)")
        form.addRow("Patch", row_of(self.patch_spin, self.mpp_spin))
        self.draw_button = qw.QPushButton("Draw rectangle", clicked=self.start_rectangle)
        self.grid_button = qw.QPushButton("Grid cells", checkable=True, toggled=self.set_grid)
        self.undo_button = qw.QPushButton("Undo", clicked=self.undo, enabled=False, toolTip=(
            f"Undo the last tag edit (Ctrl+Z on the tags layer; {MAX_UNDO} are kept)"))
        self.boxes_label = qw.QLabel(  # what the class boxes act on
            "Classes for the next region you draw", wordWrap=True)
        self.class_boxes: dict[str, qw.QCheckBox] = {}
        for name in CLASS_NAMES:
            box = self.class_boxes[name] = qw.QCheckBox(name)
            r, g, b = CLASS_COLOURS[name]  # a chip of the class colour, with readable text
            ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "white"
            box.setStyleSheet(f"QCheckBox {{ background: rgb({r},{g},{b}); color: {ink}; "
                              "border-radius: 3px; padding: 1px 4px }")
            box.setToolTip(f"{CLASS_LONG_NAMES[name]}: present in the selected region "
                           "(or, with none selected, in the next one you draw)")
            box.toggled.connect(lambda on, n=name: self._class_toggled(n, on))
        self.table = qw.QTableWidget(0, 3, minimumHeight=120, editTriggers=(
            qw.QAbstractItemView.EditTrigger.NoEditTriggers))
        self.table.setHorizontalHeaderLabels(["Region", "Classes", "Box (x, y, w, h)"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.export_button = qw.QPushButton("Export training folder…",
                                            clicked=lambda: self.export_to())
        self.import_button = qw.QPushButton(
            "Import QuPath GeoJSON…", clicked=lambda: self.import_geojson(), toolTip=(
                "Add the annotations of a QuPath GeoJSON export whose classes are tissue "
                "classes (Tumor, Stroma, Immune cells, Necrosis, or TUM...) as tagged "
                "polygons"))
        self.status = qw.QLabel(wordWrap=True)
        layout = qw.QVBoxLayout(self)
        layout.addLayout(form)
        for widget in (row_of(self.draw_button, self.grid_button, self.undo_button),
                       self.boxes_label, row_of(*self.class_boxes.values()), self.table,
                       row_of(self.import_button, self.export_button), self.status):
            layout.addWidget(widget)

    def _refresh_images(self, prefer: str | None = None) -> None:
        names = [lyr.name for lyr in self.viewer.layers if isinstance(lyr, Image)]
        target = next((n for n in (prefer, self.image_combo.currentText()) if n in names),
                      names[0] if names else "")
        with QSignalBlocker(self.image_combo):
            self.image_combo.clear()
            self.image_combo.addItems(names)
            self.image_combo.setCurrentText(target)
        if self.image is None or target != self.image.layer.name:
            self.set_image(target or None)

    def _on_inserted(self, event: Any) -> None:
        if isinstance(event.value, Image):
            path = layer_file(event.value)
            has_tags = path is not None and sidecar_path(path).exists()
            self._refresh_images(event.value.name if has_tags or self.image is None else None)

    def _on_removed(self, event: Any) -> None:
        self.shapes = None if event.value is self.shapes else self.shapes
        if isinstance(event.value, Image):
            self._refresh_images()

    def set_image(self, layer: Image | str | None) -> None:
        """Show (and edit) the tags of an image layer; None: no image."""
        if isinstance(layer, str):
            layer = self.viewer.layers[layer] if layer in self.viewer.layers else None
        self.grid_button.setChecked(False)
        self.image, self.store = tagged_image(layer), None
        self._history.clear()
        self.undo_button.setEnabled(False)
        if self.image is None:
            self.status.setText(f"{layer.name!r} has no file to keep tags beside." if layer
                                else "Choose an image opened from a file.")
        else:
            path, size = self.image.path, self.image.size
            try:
                self.store = TagStore.load(path, image_size=size)
            except InputError as exc:
                notify_error(exc, "Loading tags")  # kept as .bak when new tags are saved
                self.store = TagStore(path, image_size=size)
            for warning in self.store.warnings:
                show_warning(f"{path.name}: {warning}")
        self._rebuild_shapes()

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """Our own changes to the shapes are not user edits: ``_on_data`` ignores them."""
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    def _rebuild_shapes(self) -> None:
        if self.image is None or self.store is None:
            if self.shapes is not None and self.shapes in self.viewer.layers:
                self.viewer.layers.remove(self.shapes)
            return self._refresh_table()
        layer, regions = self.image.layer, self.store.regions
        with self._quiet():
            if self.shapes is None or self.shapes not in self.viewer.layers:
                self.shapes = Shapes(
                    name=TAGS_LAYER, ndim=2, edge_width=max(2.0, min(self.image.size) / 400),
                    features={"region_id": np.zeros(0, int), "label": np.zeros(0, object)},
                    feature_defaults={"region_id": -1, "label": ""},
                    text={"string": "{label}", "color": "white", "size": 10,
                          "anchor": "upper_left"})
                self.shapes.events.data.connect(self._on_data)
                self.shapes.bind_key(UNDO_KEY, lambda _layer: self.undo(), overwrite=True)
                self.shapes.selected_data.events.items_changed.connect(self._on_selection)
            self.shapes.selected_data = set()
            self.shapes.data = []
            for attr in ("scale", "translate", "units"):  # on the image, in its units
                setattr(self.shapes, attr, getattr(layer, attr)[-2:])
            if self.shapes not in self.viewer.layers:
                self.viewer.layers.append(self.shapes)
            add_region_shapes(self.shapes, regions)
        self._restyle([r.id for r in regions])
        self.status.setText(f"{len(regions)} region(s). Tags are kept in {self.store.sidecar}")
        return None

    def _on_data(self, event: Any) -> None:
        if not self._syncing and str(getattr(event, "action", "")) in _DONE_ACTIONS:
            self.sync_from_layer()

    def sync_from_layer(self) -> None:
        """Take the shapes as they are (drawn, moved, resized, deleted) into the store."""
        if self.shapes is None or self.store is None:
            return
        ids = self.shapes.features["region_id"].to_numpy()
        known = {r.id: r for r in self.store.regions}
        snapshot, kept, changed = self._regions(), [], False
        for i, vertices in enumerate(self.shapes.data):
            (y0, x0), (y1, x1) = np.min(vertices, axis=0), np.max(vertices, axis=0)
            bbox = (x0, y0, max(x1 - x0, 1), max(y1 - y0, 1))
            rid = int(ids[i]) if i < len(ids) and not pd.isna(ids[i]) else -1
            if rid in known and rid not in kept:
                try:
                    changed |= apply_shape(self.store, known[rid], vertices)
                except InputError as exc:  # an outline with no area: the regions as they were
                    notify_error(exc, "Editing a tag region")
                    self.store.regions = snapshot
                    return self._rebuild_shapes()
            else:  # a new shape: a new region with the classes for the next region
                rid, changed = self.store.add(bbox, self._next_classes).id, True
            kept.append(rid)
        for region in [r for r in self.store.regions if r.id not in kept]:
            self.store.remove(region.id)
            changed = True
        self._restyle(kept)
        if changed:
            self._remember(snapshot)
            self._save()

    def _regions(self) -> list[TagRegion]:
        return [replace(r) for r in self.store.regions] if self.store is not None else []

    def _remember(self, regions: list[TagRegion]) -> None:
        """Keep the regions as they were before an edit, for ``undo``."""
        self._history.append(regions)
        self.undo_button.setEnabled(True)

    def undo(self) -> None:
        """Revert the last tag edit (a region added, deleted, moved or its classes changed):
        the store, its sidecar and the shapes as they were before it."""
        if self.store is None or not self._history:
            return show_info("Nothing to undo.")
        self.store.regions = self._history.pop()
        self.undo_button.setEnabled(bool(self._history))
        self._rebuild_shapes()
        self._save()
        return None

    def _restyle(self, ids: list[int] | None = None) -> None:
        """The shapes' region ids (default: as they are), colours and texts; the table."""
        if self.shapes is not None and self.store is not None:
            ids = [int(i) for i in self.shapes.features["region_id"]] if ids is None else ids
            known = {r.id: r for r in self.store.regions}
            regions = [known.get(i) for i in ids]
            labels = ["+".join(r.classes) if r and r.classes else "untagged" for r in regions]
            edges = np.array([(*(np.array(CLASS_COLOURS[r.classes[0]]) / 255), 1.0)
                              if r and r.classes else _UNTAGGED for r in regions]).reshape(-1, 4)
            with self._quiet():
                self.shapes.features = pd.DataFrame({"region_id": ids, "label": labels})
                if ids:
                    self.shapes.edge_color = edges
                    self.shapes.face_color = np.concatenate([edges[:, :3], edges[:, 3:] * 0.15], 1)
        self._refresh_table()
        self._on_selection()

    def _refresh_table(self) -> None:
        regions = self.store.regions if self.store is not None else []
        self.table.setRowCount(len(regions))
        for row, r in enumerate(regions):
            box = str(r.bbox)[1:-1] + ("" if r.polygon is None else " (polygon)")
            for col, text in enumerate((r.id, " ".join(r.classes) or "—", box)):
                self.table.setItem(row, col, qw.QTableWidgetItem(str(text)))

    def _save(self) -> None:
        store: TagStore = self.store  # type: ignore[assignment]
        backup = store.last_backup
        try:
            path = store.save()
        except InputError as exc:
            return notify_error(exc, "Saving tags")
        if store.last_backup not in (None, backup):
            show_warning(f"The unreadable old tag file was kept as {store.last_backup}")
        self.status.setText(f"{len(store.regions)} region(s). Tags saved to {path}")
        return None

    def selected_ids(self) -> list[int]:
        if self.shapes is None or self.store is None:
            return []
        ids = self.shapes.features["region_id"].to_numpy()
        known = {r.id for r in self.store.regions}
        return [int(ids[i]) for i in sorted(self.shapes.selected_data) if ids[i] in known]

    def _on_selection(self, event: Any = None) -> None:
        """One region selected: the boxes show its classes (loading them edits nothing);
        otherwise they show the classes for the next region. The label says which."""
        ids = self.selected_ids()
        region = self.store.region(ids[0]) if len(ids) == 1 else None  # type: ignore[union-attr]
        shown = set(region.classes) if region else self._next_classes
        for name, box in self.class_boxes.items():
            with QSignalBlocker(box):
                box.setChecked(name in shown)
        many = f"{len(ids)} regions selected: select one to edit its tags. " if ids else ""
        self.boxes_label.setText(f"Editing the tags of region {region.id}" if region else
                                 f"{many}Classes for the next region you draw")

    def _class_toggled(self, name: str, on: bool) -> None:
        """Add or remove a class: on the one selected region, else for the next region."""
        store, ids = self.store, self.selected_ids()
        if store is None or len(ids) != 1:
            self._next_classes = self._next_classes | {name} if on else self._next_classes - {name}
            return self._on_selection()
        before, classes = self._regions(), set(store.region(ids[0]).classes)
        store.update(ids[0], classes=classes | {name} if on else classes - {name})
        self._remember(before)
        self._restyle()
        self._save()
        return None

    def select_regions(self, ids: list[int]) -> None:
        if self.shapes is not None:
            rows = self.shapes.features["region_id"].to_numpy()
            self.shapes.selected_data = {i for i, r in enumerate(rows) if int(r) in set(ids)}

    def start_rectangle(self) -> None:
        if self.shapes is None:
            return show_info("Choose an image opened from a file first.")
        self.grid_button.setChecked(False)
        self.viewer.layers.selection.active, self.shapes.mode = self.shapes, "add_rectangle"
        return None

    def import_geojson(self, path: str | Path | None = None) -> list[TagRegion]:
        """Add the tissue-class annotations of a QuPath GeoJSON file as tagged polygon
        regions (None: ask for the file); one edit (Undo takes it back). A file that
        cannot be read is one error notification; what was skipped, one note."""
        if self.image is None or self.store is None:
            show_info("Choose an image opened from a file first.")
            return []
        path = path or qw.QFileDialog.getOpenFileName(
            self, "Import QuPath GeoJSON", str(self.image.path.parent), GEOJSON_FILTER)[0]
        if not path:
            return []
        before = self._regions()
        try:
            added, notes = import_annotations(self.store, path)
        except InputError as exc:
            self.store.regions = before
            notify_error(exc, "Importing annotations")
            return []
        skipped = f"; {notes[0]}" + (f" (and {len(notes) - 1} more)" if len(notes) > 1
                                      else "") if notes else ""
        show_info(f"{len(added)} tagged region(s) imported from {Path(path).name}{skipped}")
        if added:
            self._remember(before)
            self._rebuild_shapes()
            self._save()
            self.select_regions([r.id for r in added])
        return added

    def export_to(self, folder: str | Path | None = None) -> RunHandle | None:
        """Write the tagged regions' patches as ``folder/train/*.png`` (None: ask)."""
        if self.image is None or self.store is None or not self.store.tagged():
            show_info("Nothing to export: tick at least one class for a region.")
            return None
        folder = folder or qw.QFileDialog.getExistingDirectory(self, "Export training folder")
        if not folder:
            return None
        store, layer = self.store, self.image.layer
        options = dict(patch_size=self.patch_spin.value(), target_mpp=self.mpp_spin.value() or None)

        def job() -> Any:
            with opened_pixels(layer) as (image, mpp):
                return (yield from iter_export(store, image, folder, mpp=mpp, **options))

        self.export_button.setEnabled(False)
        return run_in_worker(
            job, description="Exporting tagged patches", total=lambda v: v[1],
            done=lambda v: v[0], on_error=lambda e: notify_error(e, "Export"),
            on_return=lambda files: self.status.setText(
                f"Exported {len(files)} patches to {Path(folder) / 'train'}."),
            on_finish=lambda handle: self.export_button.setEnabled(True))
