"""A row's ``reward_model.ground_truth`` as a label mask.

data_prep writes the ground truth as COCO RLE (target and ignored pixels, at 840 and at the original resolution);
evaluation scores against the label mask rebuilt here, so both sides share this one reading of the rows.
"""

from __future__ import annotations

import numpy as np

from recipe.common.metrics import IGNORE_LABEL
from reward_server.masks import decode_rle


def label_mask(ground_truth: dict, original: bool = True) -> np.ndarray:
    """A row's ground truth as one uint8 label mask: 0 background, 1 target, 255 ignored (what SegMetrics takes).

    Args:
        ground_truth: ``reward_model.ground_truth`` of a row.
        original: At the original resolution (evaluation); otherwise at 840 (training).
    """
    mask_key, ignore_key = ("orig_mask", "orig_ignore") if original else ("mask", "ignore")
    labels = decode_rle(ground_truth[mask_key]).astype(np.uint8)
    if ground_truth.get(ignore_key) is not None:
        labels[decode_rle(ground_truth[ignore_key])] = IGNORE_LABEL
    return labels
