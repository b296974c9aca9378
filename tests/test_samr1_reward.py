"""SAM-R1's reward against eq. (5) and section 3.3, with a fake SAM2 that returns masks of known IoU."""

import asyncio
import json

import numpy as np
import pytest

from recipe.samr1.reward import compute_score, tiered_iou_reward
from reward_server.masks import encode_rle
from reward_server.protocol import ErrorCode, Prompt, SegResult

from support.fake_sam import FakeSam

GT = np.zeros((840, 840), bool)
GT[100:300, 100:600] = True  # 100,000 pixels


def mask_with_iou(iou: float) -> np.ndarray:
    """GT rows dropped until exactly ``iou`` of it remains (IoU = kept / 100,000, a multiple of 1/200)."""
    mask = np.zeros_like(GT)
    mask[100 : 100 + round(200 * iou), 100:600] = True
    return mask


ANSWER = (
    '<think>the large box</think><answer>{"bbox_2d": [100, 100, 600, 300], "point_2d": [350, 200], "label": "bar"}'
    "</answer>"
)


def score(solution: str, sam: FakeSam, **kwargs) -> dict:
    truth = {"mask": encode_rle(GT)}
    return asyncio.run(compute_score("refcocog_train", solution, truth, {"image": b"jpeg"}, sam_client=sam, **kwargs))


@pytest.mark.parametrize(
    ("iou", "tier"),
    [
        (1.0, 4),
        (0.805, 4),
        (0.8, 3),
        (0.75, 3),
        (0.705, 3),
        (0.7, 2),
        (0.6, 2),
        (0.505, 2),
        (0.5, 0),
        (0.2, 0),
        (0.0, 0),
    ],
)
def test_every_tier_boundary(iou, tier):
    sam = FakeSam(mask_with_iou(iou), truth=GT)
    result = score(ANSWER, sam)
    assert result["iou"] == pytest.approx(iou, abs=1e-12)
    assert result["tiered"] == tier == tiered_iou_reward(iou)
    assert result["score"] == tier + 1 + 1
    assert (result["reasoning_format"], result["segmentation_format"], result["sam_called"]) == (1, 1, 1)
    assert result["well_formed"] == 1
    (prompt,) = sam.prompts
    assert prompt.box == (100.0, 100.0, 600.0, 300.0) and prompt.points == ((350.0, 200.0),) and prompt.labels == (1,)


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8])
def test_fixed_threshold_ablations(threshold):
    for iou in (threshold, threshold + 0.005):
        expected = 4.0 if iou > threshold else 0.0
        assert score(ANSWER, FakeSam(mask_with_iou(iou), truth=GT), tiers=[[threshold, 4]])["tiered"] == expected


@pytest.mark.parametrize(
    ("solution", "failure", "reasoning"),
    [
        ("no tags at all", "no_answer", -1),
        ('<think>x</think><answer>{"bbox_2d": [1, 2, 3], "point_2d": [1, 1], "label": "a"}</answer>', "bbox", 1),
        ('<think>x</think><answer>{"bbox_2d": [9, 9, 1, 1], "point_2d": [1, 1], "label": "a"}</answer>', "bbox", 1),
        ('<think>x</think><answer>{"bbox_2d": [1, 1, 9, 9], "point_2d": [900, 1], "label": "a"}</answer>', "point", 1),
        (
            '<think>x</think><answer>{"bbox_2d": [1, 1, 9, 9], "point_2d": [NaN, 1], "label": "a"}</answer>',
            "no_answer",
            1,
        ),
        ('<answer>{"bbox_2d": [1, 1, 9, 9]}</answer>', "point", -1),
    ],
)
def test_answers_without_a_valid_box_and_point_score_the_penalty_without_calling_sam(solution, failure, reasoning):
    sam = FakeSam(mask_with_iou(1.0), truth=GT)
    result = score(solution, sam)
    assert sam.prompts == []
    assert result["failure"] == failure and result["failure_detail"]
    assert result["segmentation_format"] == -1 and result["reasoning_format"] == reasoning
    assert result["score"] == reasoning - 1 and result["sam_called"] == 0 and result["tiered"] == 0
    assert result["well_formed"] == 0


@pytest.mark.parametrize(
    ("label", "reasoning", "tags"),
    [
        ("absent", True, 1),
        ("", True, 1),
        ("   ", True, 1),
        (None, True, 1),
        (3, True, 1),
        ("absent", False, -1),
    ],
)
def test_the_label_decides_only_the_segmentation_format(label, reasoning, tags):
    """Section 3.3's three rewards are independent: the box and point reach SAM2 and earn eq. (5)'s tier whatever the
    label; a missing or empty label (not the "descriptive textual flag" the schema asks for) costs the
    segmentation-format reward alone."""
    payload = {"bbox_2d": [100, 100, 600, 300], "point_2d": [350, 200]}  # the GT box exactly
    if label != "absent":
        payload["label"] = label
    body = f"<answer>{json.dumps(payload)}</answer>"
    sam = FakeSam(mask_with_iou(1.0), truth=GT)
    result = score(f"<think>the bar</think>{body}" if reasoning else body, sam)
    assert sam.prompts == [Prompt(box=(100.0, 100.0, 600.0, 300.0), points=((350.0, 200.0),), labels=(1,))]
    assert (result["tiered"], result["reasoning_format"], result["segmentation_format"]) == (4, tags, -1)
    assert result["score"] == 4 + tags - 1 and result["iou"] == 1.0 and result["sam_called"] == 1
    assert result["failure"] == "label" and "label" in result["failure_detail"]
    assert result["well_formed"] == 0  # one broken format rule is enough


def test_a_sam_error_outranks_a_missing_label():
    failure = SegResult.failure(ErrorCode.UNAVAILABLE, "SAM2 pool unavailable after 6 attempts")
    solution = '<think>x</think><answer>{"bbox_2d": [1, 1, 9, 9], "point_2d": [2, 2]}</answer>'
    result = score(solution, FakeSam(failure=failure))
    assert (result["failure"], result["tiered"], result["segmentation_format"], result["score"]) == (
        "sam_unavailable",
        0,
        -1,
        0,
    )


def test_reasoning_format_is_independent_of_the_answer():
    outside = ANSWER + " trailing words"
    result = score(outside, FakeSam(mask_with_iou(0.9), truth=GT))
    assert (result["reasoning_format"], result["segmentation_format"], result["tiered"]) == (-1, 1, 4)
    assert result["well_formed"] == 0


def test_sam_errors_are_scored_not_raised():
    failure = SegResult.failure(ErrorCode.UNAVAILABLE, "SAM2 pool unavailable after 6 attempts")
    result = score(ANSWER, FakeSam(failure=failure))
    assert result["failure"] == "sam_unavailable" and result["tiered"] == 0 and result["score"] == 2


def test_every_result_has_the_same_keys():
    keys = {frozenset(score(s, FakeSam(mask_with_iou(0.9), truth=GT))) for s in (ANSWER, "junk", ANSWER + "x")}
    assert len(keys) == 1


def eq5(iou: float) -> float:
    """SAM-R1's eq. (5) as printed: 4 above 0.8, 3 above 0.7, 2 above 0.5, else 0."""
    if iou > 0.8:
        return 4.0
    if iou > 0.7:
        return 3.0
    if iou > 0.5:
        return 2.0
    return 0.0


def test_the_default_tiers_are_eq5_on_every_iou():
    grid = np.linspace(0.0, 1.0, 10_001).tolist()
    edges = [np.nextafter(t, d) for t in (0.5, 0.7, 0.8) for d in (0.0, 1.0)] + [0.5, 0.7, 0.8]
    for iou in grid + [float(e) for e in edges]:
        assert tiered_iou_reward(iou) == eq5(iou), iou


def test_one_client_per_pool_and_process(monkeypatch):
    from recipe.verl_runtime import sam_client

    connects = []
    monkeypatch.setattr(sam_client, "_clients", {})
    monkeypatch.setattr(
        sam_client.SamClient, "connect", classmethod(lambda cls, config: connects.append(config) or object())
    )
    mapping = {"pool": {"name": "p1", "namespace": "ns"}}
    first = sam_client.get_sam_client(mapping)
    assert sam_client.get_sam_client(mapping) is first and len(connects) == 1
    assert connects[0].pool.name == "p1"  # validated into a ServerConfig on connect
    assert sam_client.get_sam_client({"pool": {"name": "p2"}}) is not first and len(connects) == 2


def test_the_reward_does_not_ask_for_the_edge_excluded_iou():
    """SAM-R1 scores the plain IoU, so SAM2 skips the Canny edges of the edge-excluded one."""
    sam = FakeSam(mask_with_iou(0.9), truth=GT)
    assert score(ANSWER, sam)["iou"] == pytest.approx(0.9) and sam.edge_iou_asked == [False]
