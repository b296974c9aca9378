"""How a base model writes image coordinates, and the one place that turns them into pixels of the image it saw.

Qwen2.5-VL grounds in absolute pixels of the image it is shown (the 840x840 model image, docs/conventions.md).
Qwen3-VL, Qwen3.5 and, before them, Qwen2-VL ground in relative coordinates, 0 to 1000 on each axis whatever the
image's size: Qwen3-VL's official evaluation maps a prediction to pixels as ``pred / 1000 * [w, h, w, h]``
(QwenLM/Qwen3-VL, ``evaluation/ODinW-13/run_odinw.py``), as its grounding cookbooks do.

Everything past the answer parser works in pixels of the model's image: rewards, SAM2 prompts, SAM-Veteran's
L1 rule, overlays, dynamic sampling and evaluation's mapping to the original image. The parser converts with
:meth:`Coordinates.to_pixels`; whatever writes coordinates for a model to read or imitate (the CPU rollout's
scripted answers, hand-built answers in tests and benchmarks) converts back with :meth:`Coordinates.from_pixels`.
The convention belongs to the checkpoint: :func:`model_coordinates` reads it from the model's config, and every
consumer asks it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from enum import StrEnum

from reward_server.masks import scale_xy

RELATIVE_SCALE = 1000
"""Qwen3-VL's and Qwen3.5's coordinate range on each axis."""


class Coordinates(StrEnum):
    """A base model's coordinate convention.

    Attributes:
        PIXELS: Absolute pixels of the image the model is shown (Qwen2.5-VL).
        RELATIVE: 0 to :data:`RELATIVE_SCALE` on each axis (Qwen2-VL, Qwen3-VL, Qwen3.5).
    """

    PIXELS = "pixels"
    RELATIVE = "relative_1000"

    def extent(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """``(H, W)`` of the space the model writes in, for an image of ``image_hw``: the range its answers are
        validated against (a point lies inside it, a box is clipped to it)."""
        return tuple(image_hw) if self is Coordinates.PIXELS else (RELATIVE_SCALE, RELATIVE_SCALE)

    def to_pixels(self, coords: Sequence[float], image_hw: tuple[int, int]) -> tuple[float, ...]:
        """``(x, y, ...)`` as the model wrote them, in pixels of the ``image_hw`` image it was shown."""
        return tuple(float(v) for v in scale_xy(coords, self.extent(image_hw), image_hw))

    def from_pixels(self, coords: Sequence[float], image_hw: tuple[int, int]) -> tuple[float, ...]:
        """``(x, y, ...)`` in pixels of the ``image_hw`` image, as the model writes them (not rounded)."""
        return tuple(float(v) for v in scale_xy(coords, image_hw, self.extent(image_hw)))


MODEL_TYPES: dict[str, Coordinates] = {
    "qwen2_vl": Coordinates.RELATIVE,
    "qwen2_5_vl": Coordinates.PIXELS,
    "qwen3_vl": Coordinates.RELATIVE,
    "qwen3_vl_moe": Coordinates.RELATIVE,
    "qwen3_5": Coordinates.RELATIVE,
    "qwen3_5_moe": Coordinates.RELATIVE,
}
"""Each supported model family's convention, by the ``model_type`` of its Hugging Face config."""


def coordinates_of(model_type: str) -> Coordinates:
    """The convention of the ``model_type`` family.

    Raises:
        ValueError: For a family whose convention is not known, naming the known ones.
    """
    try:
        return MODEL_TYPES[model_type]
    except KeyError:
        raise ValueError(
            f"no coordinate convention is known for model_type {model_type!r}; known: {sorted(MODEL_TYPES)} "
            "(recipe/task/coordinates.py)"
        ) from None


@functools.cache
def model_coordinates(model_path: str) -> Coordinates:
    """The convention of the checkpoint at ``model_path`` (a directory, or a hub id in the local cache), read from
    its config's ``model_type``.

    Raises:
        ValueError: For a model family whose convention is not known.
    """
    from transformers import AutoConfig

    return coordinates_of(AutoConfig.from_pretrained(model_path).model_type)
