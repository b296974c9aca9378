"""A row's ground truth as a label mask.

data_prep writes the ground truth as COCO RLE (target and ignored pixels, at 840 and at the original resolution);
evaluation scores against the label mask rebuilt here, so both sides share this one reading of the rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from recipe.task.dataset_rows import IGNORE_LABEL, GroundTruth
from reward_server.masks import decode_rle


def label_mask(ground_truth: GroundTruth | Mapping[str, Any], original: bool = True) -> np.ndarray:
    """A row's ground truth as one uint8 label mask: 0 background, 1 target, 255 ignored (what SegMetrics takes).

    Args:
        ground_truth: ``reward_model.ground_truth`` of a row, or its view.
        original: At the original resolution (evaluation); otherwise at 840 (training).
    """
    truth = GroundTruth.of(ground_truth)
    mask, ignore = (truth.orig_mask, truth.orig_ignore) if original else (truth.mask, truth.ignore)
    labels = decode_rle(mask).astype(np.uint8)
    if ignore is not None:
        labels[decode_rle(ignore)] = IGNORE_LABEL
    return labels
