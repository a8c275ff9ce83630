"""The tag annotator's grid mode: a grid of patch-sized cells over the visible part of the
image; a click on a cell selects its region, or makes one (source "grid") with the classes
for the next region. ``GridMode`` is a part of ``widgets.tags.TagAnnotatorWidget`` (it uses
the widget's image, store, shapes, boxes and edit history)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from app_model.types import KeyCode, KeyMod
from napari.layers import Shapes
from napari.utils.notifications import show_info

from lpd.data.tags import cell_size, grid_cells
from napari_lpd._layers import view_region
from napari_lpd._tag_shapes import rectangle

GRID_LAYER = "LPD tag grid"
MAX_GRID_CELLS = 3000  # a Shapes layer with many more cells gets slow to draw
UNDO_KEY = KeyMod.CtrlCmd | KeyCode.KeyZ


class GridMode:
    """Grid cells for ``TagAnnotatorWidget`` (mixed into it)."""

    grid: Shapes | None = None  # "LPD tag grid"

    def cell(self) -> int:
        """Level-0 px of one grid cell: one model patch at the chosen magnification."""
        return cell_size(self.patch_spin.value(), self.mpp_spin.value() or None,
                         self.image.mpp if self.image is not None else None)

    def set_grid(self, enabled: bool) -> None:
        """Show the grid over the visible part of the image (at most MAX_GRID_CELLS)."""
        grid, self.grid, cell = self.grid, None, self.cell()
        if grid is not None and grid in self.viewer.layers:
            self.viewer.layers.remove(grid)
        cells = grid_cells(self.image.size, cell, view_region(self.image.layer)) \
            if enabled and self.image is not None else []
        if len(cells) > MAX_GRID_CELLS:
            show_info(f"{len(cells)} grid cells in view: zoom in (at most {MAX_GRID_CELLS}).")
        if not 0 < len(cells) <= MAX_GRID_CELLS:
            return self.grid_button.setChecked(False)
        self.grid = grid_layer(self.image.layer, cells, cell,  # type: ignore[union-attr]
                               self.select_cell, GRID_LAYER)  # a click picks a cell
        self.grid.bind_key(UNDO_KEY, lambda _layer: self.undo(), overwrite=True)
        self.viewer.layers.append(self.grid)
        self.viewer.layers.selection.active = self.grid
        self.status.setText("Grid: click cells to tag them, then tick their classes.")
        return None

    def select_cell(self, x: float, y: float) -> int | None:
        """Select the grid cell at level-0 (x, y): its region if it has one, else a new
        region with the classes for the next region. Returns the region id (None outside
        the image)."""
        if self.image is None or self.store is None or self.shapes is None:
            return None
        cells = grid_cells(self.image.size, self.cell(), (x, y, 1, 1))
        if not cells:
            return None
        rid = next((r.id for r in self.store.regions if r.bbox == cells[0]), None)
        if rid is None:
            before = self._regions()
            rid = self.store.add(cells[0], self._next_classes, source="grid").id
            self._remember(before)
            ids = [int(i) for i in self.shapes.features["region_id"]] + [rid]
            with self._quiet():
                self.shapes.add_rectangles([rectangle(cells[0])])
            self._restyle(ids)
            self._save()
        self.select_regions([rid])
        return rid



def grid_layer(image: Any, cells: Sequence[tuple[int, int, int, int]], cell: int,
               on_click: Callable[[float, float], object], name: str) -> Shapes:
    """The grid of ``cells`` over an image layer, on its scale; a click (press and release
    without moving) calls ``on_click(x, y)`` (level-0 px); a drag pans."""
    layer = Shapes([rectangle(c) for c in cells], shape_type="rectangle", name=name,
                   scale=image.scale[-2:], units=image.units[-2:],
                   translate=image.translate[-2:], edge_width=max(1.0, cell / 40),
                   edge_color=[1, 1, 1, 0.7], face_color=[0, 0, 0, 0])

    def drag(layer: Shapes, event: Any) -> Any:
        start, moved = np.asarray(event.position), False
        yield
        while event.type == "mouse_move":
            moved = moved or bool(np.any(np.asarray(event.position) != start))
            yield
        if not moved:
            y, x = layer.world_to_data(start)[-2:]
            on_click(float(x), float(y))

    layer.mouse_drag_callbacks.append(drag)
    return layer
