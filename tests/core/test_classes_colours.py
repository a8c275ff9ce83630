"""Class colours are readable on napari's dark canvas (WCAG 2.x contrast >= 3:1), distinct,
and so are the per-prototype shades; old checkpoints' retired colours are swapped."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lpd.classes import CLASS_COLOURS, CLASS_NAMES, RETIRED_COLOURS, readable_colours
from lpd.colours import DARK_CANVAS, MIN_CONTRAST, class_shades, contrast_ratio, relative_luminance
from lpd.config import ModelConfig

# napari's dark theme: napari.utils.theme.get_theme("dark").canvas is "black" (napari 0.9.2)
CANVAS = (0, 0, 0)


def test_wcag_formula() -> None:
    assert relative_luminance((0, 0, 0)) == 0 and relative_luminance((255, 255, 255)) == 1
    assert contrast_ratio((0, 0, 0), (255, 255, 255)) == pytest.approx(21)
    assert contrast_ratio((255, 255, 255), (0, 0, 0)) == pytest.approx(21)  # symmetric
    # W3C's worked value: #767676 on white is the lightest grey reaching 4.5:1
    assert contrast_ratio((118, 118, 118), (255, 255, 255)) == pytest.approx(4.54, abs=0.01)


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_class_colours_readable_on_dark_canvas(name: str) -> None:
    assert DARK_CANVAS == CANVAS
    assert contrast_ratio(CLASS_COLOURS[name], CANVAS) >= MIN_CONTRAST >= 3.0


def test_dark_canvas_matches_napari_theme() -> None:
    pytest.importorskip("napari")
    from napari.utils.theme import get_theme

    rgb = tuple(get_theme("dark").canvas.as_rgb_tuple(alpha=False))  # a pydantic Color
    assert rgb == DARK_CANVAS
    for name in CLASS_NAMES:
        assert contrast_ratio(CLASS_COLOURS[name], rgb) >= MIN_CONTRAST


def test_class_colours_distinct() -> None:
    for a, b in itertools.combinations(CLASS_NAMES, 2):
        diff = np.subtract(CLASS_COLOURS[a], CLASS_COLOURS[b])
        assert np.linalg.norm(diff) >= 100, (a, b)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 10])
def test_class_shades(k: int) -> None:
    for name in CLASS_NAMES:
        shades = class_shades(CLASS_COLOURS[name], k)
        assert shades.shape == (k, 3) and shades.dtype == np.uint8
        ratios = [contrast_ratio(s, CANVAS) for s in shades]
        assert min(ratios) >= MIN_CONTRAST, (name, ratios)  # the mid shade and every other
        assert ratios == sorted(ratios, reverse=True)  # lighter to darker
        assert len({tuple(s) for s in shades}) == k  # all different
        if k > 1:
            steps = np.linalg.norm(np.diff(shades.astype(float), axis=0), axis=1)
            assert steps.min() >= 10, (name, steps)  # neighbours tell apart
    assert class_shades(CLASS_COLOURS["TUM"], 1).tolist() == [list(CLASS_COLOURS["TUM"])]


def test_retired_colours_are_swapped_where_configs_are_read() -> None:
    assert contrast_ratio(RETIRED_COLOURS["NEC"], CANVAS) < MIN_CONTRAST  # why it went
    old = [list(CLASS_COLOURS[c]) for c in CLASS_NAMES[:3]] + [[40, 40, 40]]
    assert readable_colours(CLASS_NAMES, old)[3] == CLASS_COLOURS["NEC"]
    # only a class's own retired default goes; a user's choice stays
    assert readable_colours(("TUM", "NEC"), [(40, 40, 40), (1, 2, 3)]) == ((40, 40, 40), (1, 2, 3))
    config = ModelConfig.from_dict({"class_colours": old})
    assert config.class_colours == tuple(CLASS_COLOURS[c] for c in CLASS_NAMES)


def test_shipped_checkpoint_shows_readable_colours() -> None:
    import json

    from safetensors import safe_open

    from lpd.default_model import SHIPPED_PATH
    from lpd.io.checkpoint import read_checkpoint_metadata

    if not SHIPPED_PATH.is_file():
        pytest.skip("stripped install: no shipped checkpoint")
    with safe_open(str(SHIPPED_PATH), framework="np") as fh:
        stored = json.loads(fh.metadata()["config"])["class_colours"]
    config, _ = read_checkpoint_metadata(SHIPPED_PATH)
    assert len(stored) == len(config.class_colours)
    for colour in config.class_colours:
        assert contrast_ratio(colour, CANVAS) >= MIN_CONTRAST


def test_a_model_of_other_classes_gets_a_colour_per_class() -> None:
    from lpd.classes import CLASS_COLOURS, EXTRA_COLOURS
    from lpd.colours import contrast_ratio
    from lpd.model import create_model

    model = create_model("resnet18", class_names=("TUM", "STR", "LYM", "NEC", "MUC"))
    colours = model.config.class_colours
    assert len(colours) == 5 and colours[:4] == tuple(CLASS_COLOURS.values())
    assert colours[4] == EXTRA_COLOURS[0] and len(set(colours)) == 5
    assert all(contrast_ratio(c, (0, 0, 0)) >= 3.0 for c in EXTRA_COLOURS)
