"""The tests' assertion of SAM2 parity; the inputs and SAM2's own answers are :mod:`bench.sam2_parity`'s."""

import numpy as np

from bench.sam2_parity import mask_disagreement


def assert_same_mask(mask: np.ndarray, reference_logits: np.ndarray, tolerance: float = 1e-3) -> None:
    """Equal to the reference's ``logits > 0`` except where its logit is within ``tolerance`` of the threshold."""
    assert mask_disagreement(mask, reference_logits, tolerance) == 0
