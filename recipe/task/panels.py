"""Panels of what the model did, shared by the evaluation report, the training gallery and single-image inference.

A panel is a row of titled tiles: the ground truth, then one tile per SAM2 step (its mask in green, the ground
truth's outline in magenta, the prompt's box and clicks on top). A step is the JSON record the evaluator writes and
the reward path carries (:mod:`recipe.task.sam_steps`): ``prompt`` (``box``, ``points``, ``labels`` or None) and,
when SAM2 gave one, ``mask`` as COCO RLE. A step of several objects (a generalized answer) carries ``objects``, each
its own ``prompt`` and ``mask``, drawn one colour each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from recipe.task.overlay import draw_box, draw_mask_outline, draw_points, overlay_mask
from reward_server.masks import decode_rle

GT_COLOR = (255, 0, 255)
IGNORE_COLOR = (128, 128, 128)
TITLE_HEIGHT = 22
TILE_GAP = 6
OBJECT_COLORS = ((0, 255, 0), (255, 140, 0), (0, 200, 255), (255, 60, 170), (150, 90, 255), (255, 230, 0))
"""Several objects' masks, one colour each (the first is the single mask's green)."""
LEGEND = (
    "Magenta: ground truth (grey: ignored pixels); green: SAM2's mask (several objects: one colour each); yellow: the "
    "box; blue +: positive click; red -: negative click."
)


def fit(image: np.ndarray, max_side: int) -> Image.Image:
    """The image as PIL, shrunk (never enlarged) so that its longer side is at most ``max_side``."""
    picture = Image.fromarray(image)
    scale = max_side / max(picture.size)
    if scale < 1:
        picture = picture.resize(
            (round(picture.width * scale), round(picture.height * scale)), Image.Resampling.LANCZOS
        )
    return picture


def titled(picture: Image.Image, title: str) -> Image.Image:
    """The picture under a one-line title."""
    canvas = Image.new("RGB", (picture.width, picture.height + TITLE_HEIGHT), (255, 255, 255))
    canvas.paste(picture, (0, TITLE_HEIGHT))
    ImageDraw.Draw(canvas).text((4, 3), title, fill=(0, 0, 0), font=ImageFont.load_default(size=14))
    return canvas


def draw_truth(image: np.ndarray, target: np.ndarray, ignored: np.ndarray | None = None) -> np.ndarray:
    """The ground truth filled and outlined in magenta, ignored pixels (when any) in grey."""
    truth = overlay_mask(image, target, GT_COLOR)
    if ignored is not None and ignored.any():
        truth = overlay_mask(truth, ignored, IGNORE_COLOR, alpha=0.6)
    return draw_mask_outline(truth, target, GT_COLOR)


def draw_step(image: np.ndarray, step: dict[str, Any], outline: np.ndarray | None = None) -> np.ndarray:
    """A step on its image: SAM2's mask in green (each object's in its own colour), then ``outline`` (the ground
    truth) in magenta, then the prompts' boxes and clicks on top."""
    picture = image
    objects = step.get("objects") or [step]
    for number, item in enumerate(objects):
        if item.get("mask") is not None:
            picture = overlay_mask(picture, decode_rle(item["mask"]), OBJECT_COLORS[number % len(OBJECT_COLORS)])
    if outline is not None:
        picture = draw_mask_outline(picture, outline, GT_COLOR)
    for item in objects:
        prompt = item.get("prompt")
        if prompt is not None:
            if prompt["box"] is not None:
                picture = draw_box(picture, prompt["box"])
            if prompt["points"]:
                picture = draw_points(picture, prompt["points"], prompt["labels"])
    return picture


def tile_row(tiles: Sequence[Image.Image]) -> Image.Image:
    """Tiles side by side on white, top-aligned."""
    row = Image.new(
        "RGB", (sum(t.width for t in tiles) + TILE_GAP * (len(tiles) - 1), max(t.height for t in tiles)), "white"
    )
    x = 0
    for tile in tiles:
        row.paste(tile, (x, 0))
        x += tile.width + TILE_GAP
    return row
