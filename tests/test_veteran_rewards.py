"""SAM-Veteran's reward callables against Tables 1 and 2 and section 3.2 of the paper."""

import numpy as np
import pytest

from recipe.veteran.rewards import (
    VeteranRewardConfig,
    auxiliary_decision_reward,
    box_reward,
    iou_gain_reward,
    point_reward,
    refinement_case_reward,
)

# Table 1, boundaries included: (-1, 0] -> 0, (0, 0.1] -> 1, (0.1, 0.5] -> 2, (0.5, 1] -> 3.
TABLE_1 = [(-1.0, 0), (-0.3, 0), (0.0, 0), (1e-9, 1), (0.05, 1), (0.1, 1), (0.1 + 1e-9, 2), (0.3, 2), (0.5, 2),
           (0.5 + 1e-9, 3), (0.8, 3), (1.0, 3)]  # fmt: skip


@pytest.mark.parametrize(("delta", "reward"), TABLE_1)
def test_iou_gain_reward_is_table_1(delta, reward):
    assert iou_gain_reward(delta) == reward


@pytest.mark.parametrize("delta", [-0.4, 0.0, 0.05, 0.3, 0.7])
@pytest.mark.parametrize(
    ("pos", "neg"), [(False, False), (True, False), (False, True), (True, True)], ids=["stop", "pos", "neg", "both"]
)
def test_refinement_case_reward_is_table_2(pos, neg, delta):
    """Good Enough: stop 4, one kind of point R_ENC = 2, both 0. Need Refinement: R_DCS + R_Δ (stop: 0 + 0)."""
    good = {(False, False): 4, (True, False): 2, (False, True): 2, (True, True): 0}[(pos, neg)]
    need = 0 if not (pos or neg) else 1 + dict(TABLE_1).get(delta, iou_gain_reward(delta))
    assert refinement_case_reward(True, pos, neg, delta) == good
    assert refinement_case_reward(False, pos, neg, delta) == need
    assert max(good, need) <= 4  # "the maximum reward is fixed at 4 in both cases"


def test_table_2_ablations():
    no_dcs = VeteranRewardConfig(decision_weight=0)
    assert refinement_case_reward(True, False, False, 0.0, no_dcs) == 3
    assert refinement_case_reward(False, True, False, 0.3, no_dcs) == 2
    assert refinement_case_reward(True, True, False, 0.0, VeteranRewardConfig(encourage=0)) == 0
    assert refinement_case_reward(False, False, True, 0.05, VeteranRewardConfig(iou_gain="hard")) == 1 + 3
    assert refinement_case_reward(False, False, True, -0.05, VeteranRewardConfig(iou_gain="hard")) == 1
    assert refinement_case_reward(False, True, True, 0.2, VeteranRewardConfig(iou_gain="linear")) == pytest.approx(1.6)
    assert refinement_case_reward(False, True, True, 0.7, VeteranRewardConfig(iou_gain="off")) == 1
    with pytest.raises(ValueError, match="iou_gain"):
        VeteranRewardConfig(iou_gain="cubic")


def test_box_reward_is_iou_above_half_plus_l1_below_ten():
    gt = [100, 100, 300, 200]
    assert box_reward([100, 100, 300, 200], gt) == 2
    assert box_reward([105, 95, 305, 208], gt) == 2  # mean L1 = 5.5
    assert box_reward([120, 110, 320, 210], gt) == 1  # IoU ~0.73, mean L1 15
    assert box_reward([250, 150, 450, 250], gt) == 0
    assert box_reward([200, 100, 300, 200], gt) == 0  # IoU exactly 0.5 is not above 0.5
    assert box_reward([120, 110, 320, 210], gt, VeteranRewardConfig(box_iou_threshold=0.8)) == 0
    soft = box_reward([150, 100, 300, 200], gt, VeteranRewardConfig(box_iou_threshold=None))
    assert soft == pytest.approx(0.75)  # IoU itself, L1 = 12.5 fails


def test_point_reward_checks_the_region_and_the_radius():
    region = np.zeros((840, 840), bool)
    region[100:300, 100:400] = True
    center = (250.0, 200.0)
    assert point_reward((250, 200), region, center) == 2
    assert point_reward((250 + 49.9, 200), region, center) == 2
    assert point_reward((250 + 50, 200), region, center) == 1  # "less than 50 pixels"
    assert point_reward((120, 110), region, center) == 1
    assert point_reward((500, 200), region, center) == 0  # outside the region
    assert point_reward((260, 205), region, center, tau=10) == 1
    assert point_reward(None, region, center) == 0 and point_reward((250, 200), None, None) == 0


@pytest.mark.parametrize(
    ("pos", "neg", "fn", "fp", "reward"),
    [(False, False, False, False, 2), (True, True, True, True, 2), (True, False, False, False, 1),
     (False, True, False, True, 2), (False, False, True, True, 0), (True, False, False, True, 0)],
)  # fmt: skip
def test_auxiliary_decision_reward(pos, neg, fn, fp, reward):
    assert auxiliary_decision_reward(pos, neg, fn, fp) == reward
