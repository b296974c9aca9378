"""SAM-Veteran's reward callables against Tables 1 and 2 and section 3.2 of the paper; mask comprehension's SAM2
refinement against SAM2's own predictor and pycocotools."""

import asyncio
import json
import re

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils
from sam2.sam2_image_predictor import SAM2ImagePredictor

from bench.sam2_parity import predictor_reference
from recipe.task.answer import parse_response
from recipe.task.episodes import Step
from recipe.task.sam_steps import SAM_STEPS, decode_steps
from recipe.task.stored_logits import decode_logits, encode_logits
from recipe.veteran.reward_formulas import (
    PAPER,
    VeteranRewardConfig,
    auxiliary_decision_reward,
    box_reward,
    iou_gain_reward,
    point_reward,
    refinement_case_reward,
)
from recipe.veteran.task_scoring import score_auxiliary, score_grounding, score_mask_comprehension, score_workflow
from reward_server.config import EngineConfig
from reward_server.engine import SamEngine
from reward_server.images import to_rgb
from reward_server.masks import decode_rle, encode_rle
from reward_server.protocol import ImageRef, Prompt, SegResult

from support.fake_sam import EngineClient, FakeSam
from support.sam_parity import assert_same_mask

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


# Mask comprehension with the logits data preparation stored: one SAM2 call per rollout, on the mask shown.


class CountingEngine:
    """A SAM2 engine that records every call's requests and results."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def segment(self, requests, images=None, ground_truths=None):
        results = self.engine.segment(requests, images, ground_truths)
        self.calls.append((list(requests), results))
        return results


def figure_7_iou(pred: np.ndarray, gt: np.ndarray, ignore_edge: int = 20) -> float:
    """The paper's Figure 7 edge exclusion (Canny edges of the GT, dilated), with pycocotools' mask IoU."""
    edges = cv2.Canny(gt.astype(np.uint8) * 255, 100, 200)
    ignore = cv2.dilate(edges, np.ones((ignore_edge, ignore_edge), np.uint8), iterations=1).astype(bool)
    encode = [mask_utils.encode(np.asfortranarray(m & ~ignore, dtype=np.uint8)) for m in (pred, gt)]
    return float(mask_utils.iou([encode[0]], [encode[1]], [0])[0, 0])


def click_answer(pos, neg) -> str:
    return f"<think>t</think><answer>{json.dumps({'pos_point': pos, 'neg_point': neg})}</answer>"


@pytest.fixture(scope="module")
def sam_rows(tmp_path_factory):
    """Mask-comprehension rows prepared by a tiny random SAM2 at 1024 (float16 logits, as served), and the engine."""
    from data_prep.synthetic import synthetic_refer_parquet
    from data_prep.veteran import build_mask_comprehension

    engine = SamEngine(EngineConfig(model="sam2.1_hiera_t", allow_random_weights=True, device="cpu"))
    root = tmp_path_factory.mktemp("veteran_sam_rows")
    grounding = synthetic_refer_parquet(root, root / "grounding.parquet", "veteran", num_images=3, limit=2)
    build_mask_comprehension(grounding, root / "mask.parquet", engine, case_mix="all")
    rows = pq.read_table(root / "mask.parquet").to_pylist()
    assert rows, "the tiny SAM2 scored no row"
    return engine, rows


@pytest.mark.slow
def test_a_refinement_is_one_sam2_call_on_the_logits_of_the_mask_shown(sam_rows):
    engine, rows = sam_rows
    row = rows[0]
    truth, image_bytes = row["reward_model"]["ground_truth"], row["images"][0]["bytes"]
    x1, y1, x2, y2 = truth["box"]
    pos, neg = [round((x1 + x2) / 2), round((y1 + y2) / 2)], [5, 5]
    counting = CountingEngine(engine)
    text = click_answer(pos, neg)
    info = asyncio.run(score_mask_comprehension(text, truth, ImageRef.of(image_bytes), EngineClient(counting), PAPER))
    ((requests, results),) = counting.calls  # (a) one SAM2 call, with one prompt
    (refined,) = results
    assert len(requests) == 1 and info["sam_called"] == 1 and refined.ok and requests[0].return_edge_iou

    predictor = SAM2ImagePredictor(engine.model)
    predictor.set_image(to_rgb(image_bytes))
    stored = decode_logits(truth["init_logits"])
    # The mask shown is SAM2's own mask of the GT box, and the stored logits are that prediction's low-res logits.
    shown_logits, _, shown_low_res = predictor_reference(predictor, Prompt(box=tuple(truth["box"])))
    assert_same_mask(decode_rle(truth["init_mask"]), shown_logits)
    np.testing.assert_allclose(stored, np.clip(shown_low_res, -32, 32), rtol=1e-3, atol=1e-3)
    # (b) The refinement is SAM2's predict(point_coords, box, mask_input=<stored logits>).
    prompt = Prompt(box=tuple(truth["box"]), points=(tuple(pos), tuple(neg)), labels=(1, 0), mask_input=stored)
    refined_logits, _, _ = predictor_reference(predictor, prompt)
    assert_same_mask(refined.mask_array(), refined_logits)
    assert info["sam_iou"] == pytest.approx(figure_7_iou(refined.mask_array(), decode_rle(truth["mask"])), abs=1e-12)

    stop = asyncio.run(
        score_mask_comprehension(
            click_answer(None, None), truth, ImageRef.of(image_bytes), EngineClient(counting), PAPER
        )
    )
    assert len(counting.calls) == 1 and stop["sam_called"] == 0  # stopping keeps the mask: no call


@pytest.mark.slow
def test_the_iou_gain_is_measured_from_the_iou_of_the_mask_shown(sam_rows):
    _, rows = sam_rows
    for row in rows:  # (c) the stored baseline is the shown mask's edge-excluded IoU with the GT
        truth = row["reward_model"]["ground_truth"]
        shown, gt = decode_rle(truth["init_mask"]), decode_rle(truth["mask"])
        assert truth["init_edge_iou"] == pytest.approx(figure_7_iou(shown, gt), abs=1e-12)
    truth = {**rows[0]["reward_model"]["ground_truth"], "case": "need_refinement"}
    before = truth["init_edge_iou"]
    table_1 = [(delta, gain) for delta, gain in ((-0.05, 0), (0.05, 1), (0.3, 2), (0.6, 3)) if 0 <= before + delta <= 1]
    assert table_1
    for delta, gain in table_1:  # a refined mask of IoU before + delta earns Table 1's tier of delta
        sam = FakeSam(edge_iou=before + delta)
        info = asyncio.run(score_mask_comprehension(click_answer([420, 420], None), truth, None, sam, PAPER))
        assert (info["iou_gain"], info["case"], info["sam_iou"]) == (gain, 1 + gain, pytest.approx(before + delta))


def test_rows_without_usable_logits_score_zero_with_a_reason_and_no_sam_call(caplog):
    truth = {"mask": {}, "box": [0, 0, 10, 10], "init_edge_iou": 0.5, "case": "need_refinement"}
    sam = FakeSam(edge_iou=0.9)
    corrupt = {**truth, "init_logits": {"shape": [256, 256], "data": b"\x00" * 10}}
    for row, reason in (
        (truth, r"no init_logits.*make data-veteran"),
        (corrupt, r"corrupt init_logits.*make data-veteran"),
    ):
        caplog.clear()
        info = asyncio.run(score_mask_comprehension(click_answer([5, 5], None), row, None, sam, PAPER))
        assert info["score"] == 0.0 and info["failure"] == "bad_row" and info["sam_called"] == 0.0
        assert any(re.search(reason, record.getMessage()) for record in caplog.records)
    assert sam.prompts == []


def test_grounding_scores_the_edge_excluded_iou_it_asks_for():
    truth = {"mask": encode_rle(np.ones((840, 840), bool)), "box": [100, 100, 500, 300]}
    sam = FakeSam(iou=0.2, edge_iou=0.7)
    text = f"<think>t</think><answer>{json.dumps({'bbox_2d': [100, 100, 500, 300]})}</answer>"
    info = asyncio.run(score_grounding(text, truth, None, sam, PAPER))
    assert sam.edge_iou_asked == [True] and info["sam_iou"] == 0.7


# Each task's total (section 3.2: formatting + the task's rewards) and the workflow's mean of its turns' totals,
# against values computed by hand from the paper's formulas.


def box_answer(box, think: bool = True) -> str:
    body = f"<answer>{json.dumps({'bbox_2d': box})}</answer>"
    return f"<think>t</think>{body}" if think else body


def test_each_single_turn_total_is_formatting_plus_its_tasks_rewards():
    truth = {"mask": {}, "box": [100, 100, 500, 300]}
    grounding = asyncio.run(
        score_grounding(box_answer([100, 100, 500, 300]), truth, None, FakeSam(edge_iou=0.7), PAPER)
    )
    assert grounding["score"] == pytest.approx(1 + 1 + 2 + 0.7)  # tags + answer + box (IoU 1, L1 0) + R_SAM
    assert grounding["well_formed"] == 1
    untagged = asyncio.run(
        score_grounding(box_answer([100, 100, 500, 300], think=False), truth, None, FakeSam(edge_iou=0.7), PAPER)
    )
    assert untagged["well_formed"] == 0

    sam = FakeSam(edge_iou=0.8)
    shown = np.full((256, 256), -3.0, np.float32)
    row = {**truth, "init_logits": encode_logits(shown), "init_edge_iou": 0.5, "case": "need_refinement"}
    refined = asyncio.run(score_mask_comprehension(click_answer([420, 420], [100, 120]), row, None, sam, PAPER))
    # Need Refinement, both points: R_DCS 1 + R_delta(0.8 - 0.5 = 0.3, Table 1: 2); R_SAM of the refined mask.
    assert refined["score"] == pytest.approx(1 + 1 + 0.8 + (1 + 2))
    (prompt,) = sam.prompts  # the GT box, the positive click labelled 1, the negative 0, the shown mask's logits
    assert (prompt.box, prompt.points, prompt.labels) == ((100, 100, 500, 300), ((420, 420), (100, 120)), (1, 0))
    np.testing.assert_array_equal(prompt.mask_input, shown)

    region = np.zeros((840, 840), bool)
    region[100:300, 100:400] = True
    aux_truth = {
        "false_negative": {"mask": encode_rle(region), "center": [250, 200]},
        "false_positive": {"mask": encode_rle(region), "center": [250, 200]},
    }
    aux = score_auxiliary(click_answer([250, 200], [120, 110]), aux_truth, PAPER)
    # Both regions exist and both points are given: R_A^DCS 2; points: inside and near 2, inside only 1.
    assert aux["score"] == 1 + 1 + 2 + (2 + 1)
    (record,) = decode_steps(aux[SAM_STEPS])
    assert record["prompt"] == {"box": None, "points": [[250.0, 200.0], [120.0, 110.0]], "labels": [1, 0]}


def turn(kind: str, text: str, edge_iou: float | None = None, reasoning: bool = True) -> Step:
    """A workflow turn: the answer, parsed under the turn's tag rule, and SAM2's mask (None: SAM2 not called)."""
    result = None if edge_iou is None else SegResult(mask={}, edge_iou=edge_iou)
    return Step(kind, text, parse_response(text, reasoning=reasoning), result=result)


GT_BOX = [100, 100, 300, 200]
EXACT, SHIFTED = [100, 100, 300, 200], [120, 110, 320, 210]  # box reward 2; 1 (IoU ~0.73 > 0.5, mean L1 15)
STOP = click_answer(None, None)
WORKFLOW_CASES = {
    # Grounding 1 + 1 + 2 + 0.6; a positive click on a Need Refinement mask, IoU 0.6 -> 0.75: 1 + 1 + 0.75 + R_DCS 1
    # + R_delta(0.15) 2; stopping keeps the mask, on a mask that still needs refinement: 1 + 1 + 0.75 + 0.
    "need_refinement": (
        [
            turn("grounding", box_answer(EXACT), 0.6),
            turn("refinement", click_answer([150, 150], None), 0.75),
            turn("refinement", STOP),
        ],
        "stop",
        PAPER,
        ((1 + 1 + 2 + 0.6) + (1 + 1 + 0.75 + 1 + 2) + (1 + 1 + 0.75 + 0)) / 3,
        0.75,
    ),
    # Answer-only tags where <think> was asked: 0 + 1 + 1 + 1.0; one kind of point on a Good Enough mask, IoU 1 ->
    # 0.9: 1 + 1 + 0.9 + R_ENC 2; an invalid point (outside the image): the tag reward alone.
    "good_enough_clicked": (
        [
            turn("grounding", box_answer(SHIFTED, think=False), 1.0),
            turn("refinement", click_answer(None, [150, 150]), 0.9),
            turn("refinement", click_answer([900, 5], None)),
        ],
        "invalid_refinement",
        PAPER,
        ((0 + 1 + 1 + 1.0) + (1 + 1 + 0.9 + 2) + 1) / 3,
        0.9,
    ),
    # Stopping on a Good Enough mask: R_DCS 1 + the bonus 3.
    "good_enough_stopped": (
        [turn("grounding", box_answer(EXACT), 1.0), turn("refinement", STOP)],
        "stop",
        PAPER,
        ((1 + 1 + 2 + 1.0) + (1 + 1 + 1.0 + 1 + 3)) / 2,
        1.0,
    ),
    # Table 5 without R_SAM: the IoU terms drop out, the decisions stay.
    "without_r_sam": (
        [turn("grounding", box_answer(EXACT), 1.0), turn("refinement", STOP)],
        "stop",
        VeteranRewardConfig(sam_weight=0),
        ((1 + 1 + 2) + (1 + 1 + 1 + 3)) / 2,
        1.0,
    ),
    # The answer-only tag rule of the "w/o CoT" ablation, met; a box that is not one: tags only.
    "invalid_grounding": (
        [turn("grounding", box_answer([300, 100, 100, 200], think=False), reasoning=False)],
        "invalid_grounding",
        VeteranRewardConfig(grounding_cot=False),
        1.0,
        0.0,
    ),
}


@pytest.mark.parametrize(
    ("steps", "termination", "config", "score", "final_iou"), WORKFLOW_CASES.values(), ids=list(WORKFLOW_CASES)
)
def test_a_workflow_scores_the_mean_of_its_turns_rewards(steps, termination, config, score, final_iou):
    info = score_workflow(steps, {"box": GT_BOX}, termination, config)
    assert info["score"] == pytest.approx(score, rel=1e-12) and info["turns"] == len(steps)
    assert info["final_edge_iou"] == final_iou and info["stopped"] == (termination == "stop")
    assert info["failure"] == ("" if termination == "stop" else termination)
    # Well formed: every turn kept its tag rule and gave a valid answer.
    well_formed = {"need_refinement", "good_enough_stopped", "without_r_sam"}
    assert info["well_formed"] == any(steps is WORKFLOW_CASES[name][0] for name in well_formed)
