"""Checks a prompt against its image and turns it into SAM2's point tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reward_server.protocol import Prompt
from reward_server.validation import check_box, check_point

BOX_CORNER_LABELS = (2, 3)  # SAM2's labels for a box's top-left and bottom-right corner tokens


@dataclass(frozen=True)
class PreparedPrompt:
    """A validated prompt: the box (clipped) as two corner tokens followed by the clicks, in image pixels."""

    coords: np.ndarray
    token_labels: np.ndarray
    mask_input: np.ndarray | None

    @property
    def shape_key(self) -> tuple[int, bool]:
        """Prompts sharing this key decode together without padding: token count and whether a mask is given."""
        return len(self.token_labels), self.mask_input is not None


def prepare_prompt(prompt: Prompt, image_hw: tuple[int, int], mask_input_size: int) -> PreparedPrompt | str:
    """The prompt as SAM2 tokens, or the reason it is invalid.

    Args:
        prompt: Box, points and labels in the image's pixel coordinates, optional previous logits.
        image_hw: ``(H, W)`` of the image.
        mask_input_size: Side ``S`` of the low-resolution logits the model accepts as ``mask_input``.
    """
    if prompt.box is None and not prompt.points:
        return "a prompt needs a box or at least one point"
    coords: list[tuple[float, float]] = []
    labels: list[int] = []
    if prompt.box is not None:
        box, error = check_box(prompt.box, image_hw)
        if error:
            return f"box: {error}"
        coords += [(box[0], box[1]), (box[2], box[3])]
        labels += BOX_CORNER_LABELS
    if len(prompt.points) != len(prompt.labels):
        return f"{len(prompt.points)} points but {len(prompt.labels)} labels"
    for value, label in zip(prompt.points, prompt.labels, strict=True):
        point, error = check_point(value, image_hw)
        if error:
            return f"point: {error}"
        if isinstance(label, bool) or label not in (0, 1):
            return f"point labels must be 1 (positive) or 0 (negative), got {label!r:.20}"
        coords.append(point)
        labels.append(int(label))
    mask_input = None
    if prompt.mask_input is not None:
        mask_input = np.asarray(prompt.mask_input)
        expected = (mask_input_size, mask_input_size)
        if mask_input.shape not in (expected, (1, *expected)) or not np.issubdtype(mask_input.dtype, np.floating):
            return f"mask_input must be float logits of shape {expected} or (1, *{expected}), got {mask_input.shape}"
        mask_input = mask_input.reshape(1, *expected).astype(np.float32)
        if not np.isfinite(mask_input).all():
            return "mask_input holds non-finite logits"
    return PreparedPrompt(np.asarray(coords, np.float32), np.asarray(labels, np.int32), mask_input)
