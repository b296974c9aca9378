"""The green overlay against its formula, and the drawing helpers."""

import numpy as np
import pytest
from PIL import Image

from recipe.task.overlay import (
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
    draw_box,
    draw_mask_outline,
    draw_points,
    overlay_mask,
)
from reward_server.images import to_rgb


@pytest.fixture
def image_and_mask():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[5:25, 10:50] = True
    return image, mask


def test_overlay_is_half_pixel_half_green_inside_and_unchanged_outside(image_and_mask):
    image, mask = image_and_mask
    out = overlay_mask(image, mask)
    expected = np.rint(0.5 * image.astype(np.float64) + 0.5 * np.array([0, 255, 0])).astype(np.uint8)
    assert np.array_equal(out[mask], expected[mask])
    assert np.array_equal(out[~mask], image[~mask])
    assert out.dtype == np.uint8 and out is not image
    assert np.array_equal(image, image_and_mask[0])  # input untouched


def test_overlay_accepts_pil_and_grayscale(image_and_mask):
    image, mask = image_and_mask
    assert np.array_equal(overlay_mask(Image.fromarray(image), mask), overlay_mask(image, mask))
    gray = image[..., 0]
    assert overlay_mask(gray, mask).shape == (40, 60, 3)


def test_overlay_rejects_mismatched_masks(image_and_mask):
    image, _ = image_and_mask
    with pytest.raises(ValueError, match="does not match"):
        overlay_mask(image, np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="uint8"):
        to_rgb(image.astype(np.float32))


def test_draw_box_outlines_exclusive_edges():
    out = draw_box(np.zeros((50, 50, 3), np.uint8), [10, 10, 30, 20], color=(255, 0, 0), thickness=1)
    assert (out[10, 10:30, 0] == 255).all() and (out[19, 10:30, 0] == 255).all()
    assert out[20, 15, 0] == 0 and out[15, 30, 0] == 0  # x2, y2 are exclusive
    assert out[15, 15, 0] == 0  # outline only


def test_draw_points_colors_by_label():
    image = np.zeros((80, 80, 3), np.uint8)
    out = draw_points(image, [(20, 20), (60, 60)], [1, 0], radius=6)
    assert tuple(out[20, 16]) == POSITIVE_COLOR
    assert tuple(out[60, 56]) == NEGATIVE_COLOR
    assert out[40, 40].sum() == 0
    with pytest.raises(ValueError):
        draw_points(image, [(1, 1)], [1, 0])


def test_draw_mask_outline_follows_the_boundary(image_and_mask):
    _, mask = image_and_mask
    out = draw_mask_outline(np.zeros((40, 60, 3), np.uint8), mask, color=(0, 0, 255), thickness=1)
    assert out[5, 20, 2] == 255 and out[24, 20, 2] == 255 and out[15, 10, 2] == 255
    assert out[15, 30, 2] == 0 and out[0, 0, 2] == 0
