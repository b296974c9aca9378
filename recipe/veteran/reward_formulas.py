"""SAM-Veteran's rewards (section 3.2, Tables 1 and 2, A.5), as plain functions of parsed answers and IoUs.

Task rewards add the formatting reward (+1 for the tag rule, +1 for a strictly parsable answer) to:

- textual grounding: the box reward (IoU with the GT box above 0.5, mean L1 below 10 px) and ``R_SAM``, the IoU of
  SAM2's mask of the box;
- mask comprehension: ``R_SAM`` of the refined mask and the case/action reward of Table 2 (decision reward,
  IoU-gain reward of Table 1, the encouraging score);
- auxiliary: the decision reward (a point exactly when its error region exists) and the point reward (inside the
  region, and within ``tau_d`` of its centre).

Training IoUs are edge-excluded (docs/conventions.md, Edge-excluded IoU); callers pass them in. A turn's total is
:func:`turn_reward`. Every ablation of Tables 5 and 10 is a field of :class:`VeteranRewardConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from recipe.task.answer import MAX_OBJECTS
from recipe.task.prompts import asks_for_reasoning
from reward_server.masks import box_iou, box_mean_l1

IOU_GAIN_TIERS: tuple[tuple[float, float], ...] = ((0.5, 3.0), (0.1, 2.0), (0.0, 1.0))
"""Table 1: (Δ strictly above, reward), checked in order; Δ in (-1, 0] earns 0."""


def _tiered_gain(delta: float) -> float:
    return next((reward for threshold, reward in IOU_GAIN_TIERS if delta > threshold), 0.0)


IOU_GAIN_MODES: dict[str, Callable[[float], float]] = {
    "tiered": _tiered_gain,  # Table 1
    "hard": lambda delta: 3.0 * (delta > 0),  # Table 5, R_h^Δ = 3 * 1[Δ > 0]
    "linear": lambda delta: 3.0 * max(delta, 0.0),  # Table 10, R^Δ = 3 * ReLU(Δ)
    "off": lambda delta: 0.0,  # Table 5, without R^Δ
}


@dataclass
class VeteranRewardConfig:
    """Reward knobs; the defaults are the paper's, the alternatives its ablations.

    Attributes:
        sam_weight: Weight of ``R_SAM`` (0: Table 5, without R_SAM).
        decision_weight: Weight of the decision rewards ``R_C^DCS`` and ``R_A^DCS`` (0: Table 5, without R_DCS).
        iou_gain: ``tiered`` (Table 1), ``hard``, ``linear`` or ``off`` (Tables 5 and 10).
        encourage: ``R_ENC``, for one kind of point on a Good Enough mask (0: Table 10).
        good_enough_bonus: Added to the decision reward for stopping on a Good Enough mask (Table 2: 3).
        box_iou_threshold: Box IoU above which ``R_IoU^B`` is 1; None is the soft variant ``R_IoU^B = IoU`` (Table 10).
        box_l1_threshold: Mean absolute coordinate error below which ``R_L1^B`` is 1 (pixels).
        point_radius: ``tau_d``, the point reward's distance to the region centre (Table 10: 10, 30, 50).
        format_reward: Each of the two formatting rewards.
        grounding_cot: Grounding prompts ask for ``<think>`` first, and the tag rule wants it (Table 6: w/o CoT).
        mask_cot: Likewise for the refinement tasks (Table 6: w/o CoT, w/o Mask CoT).
        max_objects: How many boxes a generalized grounding answer may list (several objects or none; ours).
    """

    sam_weight: float = 1.0
    decision_weight: float = 1.0
    iou_gain: str = "tiered"
    encourage: float = 2.0
    good_enough_bonus: float = 3.0
    box_iou_threshold: float | None = 0.5
    box_l1_threshold: float = 10.0
    point_radius: float = 50.0
    format_reward: float = 1.0
    grounding_cot: bool = True
    mask_cot: bool = True
    max_objects: int = MAX_OBJECTS

    def reasoning(self, task: str) -> bool:
        """Whether ``task``'s prompt and tag rule include the ``<think>`` step (:func:`asks_for_reasoning`)."""
        return asks_for_reasoning(task, self.grounding_cot, self.mask_cot)

    def __post_init__(self):
        if self.iou_gain not in IOU_GAIN_MODES:
            raise ValueError(f"iou_gain must be one of {sorted(IOU_GAIN_MODES)}, got {self.iou_gain!r}")


PAPER = VeteranRewardConfig()


def turn_reward(
    config: VeteranRewardConfig,
    *,
    format_tags: float,
    format_answer: float,
    box: float = 0.0,
    sam_iou: float = 0.0,
    case: float = 0.0,
    decision: float = 0.0,
    point: float = 0.0,
) -> float:
    """One turn's total (section 3.2): the two formatting rewards plus its task's components, 0 where they do not
    apply (grounding: ``box`` and ``R_SAM``; mask comprehension: ``R_SAM`` and Table 2's ``case``; auxiliary:
    ``decision`` and ``point``).

    ``R_SAM`` (``sam_iou``) is weighted by ``config.sam_weight``; the other components arrive already weighted.
    """
    # The order of the additions fixes the float result. The box reward comes before R_SAM: with the paper's values
    # everything before R_SAM is a whole number, so the sum so far is exact and a grounding total is rounded once.
    # The auxiliary pair is summed on its own first, as its reward always has been.
    return format_tags + format_answer + box + config.sam_weight * sam_iou + case + (decision + point)


def iou_gain_reward(delta: float, mode: str = "tiered") -> float:
    """``R^Δ`` for ``Δ = IoU(M', M_gt) - IoU(M, M_gt)``: Table 1 by default."""
    return IOU_GAIN_MODES[mode](delta)


def refinement_case_reward(
    good_enough: bool, has_pos: bool, has_neg: bool, delta: float, config: VeteranRewardConfig = PAPER
) -> float:
    """Table 2: the decision, IoU-gain and encouraging rewards of one refinement action on one mask.

    Args:
        good_enough: The mask needs no click (edge-excluded IoU 1); otherwise it needs refinement.
        has_pos: The answer has a positive click.
        has_neg: The answer has a negative click.
        delta: IoU change the action caused (0 for (null, null): the mask stays).
        config: Reward knobs.
    """
    stops = not (has_pos or has_neg)
    if good_enough:
        if stops:
            return config.decision_weight * 1.0 + config.good_enough_bonus
        return config.encourage if has_pos != has_neg else 0.0
    decision = 0.0 if stops else 1.0  # refining a mask that needs it is the right decision
    return config.decision_weight * decision + iou_gain_reward(0.0 if stops else delta, config.iou_gain)


def box_reward(pred_box: Sequence[float], gt_box: Sequence[float], config: VeteranRewardConfig = PAPER) -> float:
    """``R_IoU^B + R_L1^B`` (Seg-Zero's box rewards): IoU above the threshold, mean L1 below 10 px."""
    iou = float(box_iou(pred_box, gt_box)[0, 0])
    iou_part = iou if config.box_iou_threshold is None else float(iou > config.box_iou_threshold)
    return iou_part + float(box_mean_l1(pred_box, gt_box) < config.box_l1_threshold)


def point_reward(
    point: Sequence[float] | None, region_mask: np.ndarray | None, center: Sequence[float] | None, tau: float = 50.0
) -> float:
    """1 if the click lies in its error region, plus 1 if it is also within ``tau`` pixels of the region's centre.

    A missing click or a missing region earns 0 (the decision reward handles whether a click was due).
    """
    if point is None or region_mask is None or center is None:
        return 0.0
    x, y = float(point[0]), float(point[1])
    height, width = region_mask.shape
    if not (0 <= x < width and 0 <= y < height) or not region_mask[int(y), int(x)]:
        return 0.0
    return 1.0 + float(math.dist((x, y), (float(center[0]), float(center[1]))) < tau)


def auxiliary_decision_reward(
    has_pos: bool, has_neg: bool, has_false_negative: bool, has_false_positive: bool
) -> float:
    """``R_A^DCS``: +1 when ``neg_point`` is given exactly when a false-positive region exists, +1 likewise for
    ``pos_point`` and a false-negative region."""
    return float(has_neg == has_false_positive) + float(has_pos == has_false_negative)
