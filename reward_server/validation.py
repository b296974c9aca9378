"""Validity rules for boxes and points, shared by the answer parser and the SAM2 engine's request checks.

Each check returns ``(value, None)`` or ``(None, reason)``; nothing here raises on bad input.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from reward_server.masks import clip_box

Box = tuple[float, float, float, float]
Point = tuple[float, float]


def finite_numbers(value: Any, count: int) -> tuple[list[float] | None, str | None]:
    """The value as ``count`` finite floats (a list or tuple of real numbers, booleans excluded), or the reason."""
    if not isinstance(value, list | tuple | np.ndarray) or len(value) != count:
        return None, f"expected {count} numbers, got {value!r:.80}"
    result = []
    for item in value:
        # bool is an int subclass in Python; JSON true/false are not coordinates.
        if isinstance(item, bool | np.bool_) or not isinstance(item, numbers.Real):
            return None, f"expected numbers, got {item!r:.40}"
        try:
            number = float(item)
        except OverflowError:
            return None, f"number out of range: {item}"
        if not math.isfinite(number):
            return None, f"non-finite number: {item}"
        result.append(number)
    return result, None


def check_box(value: Any, image_hw: tuple[int, int]) -> tuple[Box | None, str | None]:
    """A valid box: 4 finite numbers with ``x1 < x2`` and ``y1 < y2`` after clipping to the image.

    Returns:
        The clipped box, or the reason it is invalid (inverted, degenerate or entirely outside the image).
    """
    values, error = finite_numbers(value, 4)
    if error:
        return None, error
    box = tuple(clip_box(values, image_hw))
    if not (box[0] < box[2] and box[1] < box[3]):
        return None, f"empty box after clipping to the {image_hw[1]}x{image_hw[0]} image: {values}"
    return box, None


def check_point(value: Any, image_hw: tuple[int, int]) -> tuple[Point | None, str | None]:
    """A valid point: 2 finite numbers with ``0 <= x < W`` and ``0 <= y < H`` (it lies on a pixel)."""
    values, error = finite_numbers(value, 2)
    if error:
        return None, error
    x, y = values
    height, width = image_hw
    if not (0.0 <= x < width and 0.0 <= y < height):
        return None, f"point outside the {width}x{height} image: {values}"
    return (x, y), None
