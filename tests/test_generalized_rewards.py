"""Several objects or none (issue 24): the list answer, one-to-one matching, and both recipes' rewards on it.

Rewards run on the box engine (a mask is its prompt's filled box), so every IoU below is worked out by hand from the
boxes; matching is checked against an exhaustive search over every one-to-one pairing.
"""

import asyncio
import itertools
import json

import numpy as np
import pytest

from recipe.samr1.reward import compute_score
from recipe.task.answer import AnsweredObject, parse_response
from recipe.task.dataset_rows import GroundTruth, Target
from recipe.task.matching import assign, match_boxes
from recipe.veteran.reward_formulas import PAPER
from recipe.veteran.task_scoring import score_grounding
from reward_server.box_engine import BoxEngine
from reward_server.config import BOX_MODEL, EngineConfig
from reward_server.masks import box_iou, box_to_mask, edge_excluded_iou, encode_rle
from reward_server.protocol import ImageRef

from support.fake_sam import EngineClient

A, B = [100.0, 100.0, 300.0, 300.0], [500.0, 500.0, 700.0, 600.0]
B_TALL = [500.0, 500.0, 700.0, 650.0]  # IoU with B: 20,000 / 30,000 = 2/3; mean L1 12.5 px
C = [50.0, 600.0, 150.0, 700.0]  # overlaps neither
IMAGE = ImageRef.of(np.zeros((840, 840, 3), np.uint8))


def box_sam() -> EngineClient:
    return EngineClient(BoxEngine(EngineConfig(model=BOX_MODEL)))


def truth_of(*boxes: list[float]) -> dict:
    """A generalized ground truth whose objects are filled boxes (their union as the target)."""
    masks = [box_to_mask(box, (840, 840)) for box in boxes]
    union = np.logical_or.reduce(masks) if masks else np.zeros((840, 840), bool)
    objects = [Target.build(mask=encode_rle(mask), box=box) for mask, box in zip(masks, boxes, strict=True)]
    return GroundTruth.build(mask=encode_rle(union), box=None, objects=objects).to_dict()


def samr1_answer(*boxes: list[float]) -> str:
    centre = lambda box: [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]  # noqa: E731
    items = [{"bbox_2d": box, "point_2d": centre(box), "label": "x"} for box in boxes]
    return f"<think>t</think><answer>{json.dumps(items)}</answer>"


def samr1(answer: str, truth: dict, **kwargs) -> dict:
    extra = {"image": IMAGE}
    return asyncio.run(compute_score("grefcoco_train", answer, truth, extra, sam_client=box_sam(), **kwargs))


# The list answer.


def test_the_list_answer_parses_each_object_in_pixels():
    parsed = parse_response(samr1_answer(A, B))
    objects = parsed.objects(with_point=True, with_label=True)
    assert objects.value == (
        AnsweredObject((100.0, 100.0, 300.0, 300.0), (200.0, 200.0), "x"),
        AnsweredObject((500.0, 500.0, 700.0, 600.0), (600.0, 550.0), "x"),
    )
    assert parse_response("<think>t</think><answer>[]</answer>").objects().value == ()


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ('{"bbox_2d": [1, 2, 30, 40]}', "answer is JSON object, expected a list of objects"),
        ("null", "answer is JSON null, expected a list of objects"),
        ("[1]", "object 1 is JSON int, expected an object"),
        ('[{"bbox_2d": [30, 2, 1, 40]}]', "object 1: "),
        ('[{"bbox_2d": [1, 2, 30, 40]}, {"bbox_2d": [1, 2, 30, 40]}]', "object 2 repeats the box of an earlier object"),
        ('[{"bbox_2d": [1, 2, 30, 40]}, {"box": [1, 2, 3, 4]}]', "object 2: missing key 'bbox_2d'"),
        ("[" + ",".join(f'{{"bbox_2d": [{i}, 0, {i + 5}, 5]}}' for i in range(4)) + "]", "4 objects, at most 3"),
        ("[{", "answer is not valid JSON"),
    ],
)
def test_every_malformed_list_is_a_field_failure_with_its_reason(answer, reason):
    field = parse_response(f"<think>t</think><answer>{answer}</answer>").objects(max_objects=3)
    assert not field.ok and field.error.startswith(reason)


def test_the_point_and_label_are_required_only_when_asked_for():
    parsed = parse_response('<think>t</think><answer>[{"bbox_2d": [1, 2, 30, 40]}]</answer>')
    assert parsed.objects().ok
    assert parsed.objects(with_point=True).error == "object 1: missing key 'point_2d'"


# One-to-one matching.


def best_total(scores: np.ndarray) -> float:
    rows, columns = scores.shape
    if rows <= columns:
        pairings = (zip(range(rows), perm, strict=True) for perm in itertools.permutations(range(columns), rows))
    else:
        pairings = (zip(perm, range(columns), strict=True) for perm in itertools.permutations(range(rows), columns))
    return max((sum(scores[i, j] for i, j in pairing) for pairing in pairings), default=0.0)


@pytest.mark.parametrize("seed", range(6))
def test_assignment_reaches_the_exhaustive_optimum(seed):
    rng = np.random.default_rng(seed)
    for _ in range(150):
        rows, columns = (int(v) for v in rng.integers(0, 6, 2))
        scores = rng.random((rows, columns)) if rng.random() < 0.5 else rng.integers(0, 3, (rows, columns)) * 1.0
        pairs = assign(scores)
        assert len(pairs) == min(rows, columns)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        assert sum(scores[i, j] for i, j in pairs) == pytest.approx(best_total(scores))


def test_boxes_are_matched_by_iou_not_by_order():
    assert match_boxes([B_TALL, C, A], [A, B]) == [(0, 1), (2, 0)]
    assert match_boxes([], [A]) == [] and match_boxes([A], []) == []
    assert box_iou(B_TALL, B)[0, 0] == pytest.approx(2 / 3)


# SAM-R1.


def test_samr1_scores_the_matched_objects_over_the_larger_count():
    result = samr1(samr1_answer(B_TALL, C, A), truth_of(A, B))
    # A matched exactly (IoU 1: tier 4), B_TALL to B (IoU 2/3: tier 2), C unmatched (0); three answered objects.
    assert result["tiered"] == pytest.approx((4 + 2) / 3)
    assert result["iou"] == pytest.approx((1 + 2 / 3) / 3)
    assert result["score"] == pytest.approx(2 + 1 + 1)
    assert result["sam_called"] == 2 and result["failure"] == ""


def test_samr1_a_correct_none_earns_the_top_tier_and_a_box_for_nothing_earns_nothing():
    none = samr1(samr1_answer(), truth_of())
    assert (none["tiered"], none["score"], none["sam_called"], none["iou"]) == (4.0, 6.0, 0, 1.0)
    assert samr1(samr1_answer(), truth_of(), tiers=[[0.5, 4.0]])["tiered"] == 4.0
    invented = samr1(samr1_answer(A), truth_of())
    assert (invented["tiered"], invented["score"], invented["sam_called"]) == (0.0, 2.0, 0)
    missed = samr1(samr1_answer(), truth_of(A, B))
    assert (missed["tiered"], missed["score"]) == (0.0, 2.0)


def test_samr1_a_malformed_list_earns_the_penalty_and_calls_no_sam():
    result = samr1(samr1_answer(A, A), truth_of(A))
    assert result["segmentation_format"] == -1.0 and result["failure"] == "objects"
    assert result["sam_called"] == 0 and result["tiered"] == 0.0
    assert samr1("<think>t</think>", truth_of(A))["failure"] == "no_answer"


@pytest.mark.parametrize("box", [A, [100.0, 100.0, 300.0, 260.0], [100.0, 100.0, 300.0, 200.0], C])
def test_samr1_one_object_earns_what_the_papers_single_answer_earns(box):
    """A generalized row with one object and a one-item list scores as the papers' row with the single answer."""
    single = json.dumps({"bbox_2d": box, "point_2d": [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], "label": "x"})
    papers = samr1(f"<think>t</think><answer>{single}</answer>", {"mask": encode_rle(box_to_mask(A, (840, 840)))})
    generalized = samr1(samr1_answer(box), truth_of(A))
    for key in ("score", "tiered", "iou", "reasoning_format", "segmentation_format", "sam_called"):
        assert generalized[key] == pytest.approx(papers[key]), key


# SAM-Veteran grounding.


def grounding(*boxes: list[float]) -> str:
    return f"<think>t</think><answer>{json.dumps([{'bbox_2d': box} for box in boxes])}</answer>"


def veteran(answer: str, truth: dict) -> dict:
    return asyncio.run(score_grounding(answer, truth, IMAGE, box_sam(), PAPER))


def test_veteran_grounding_scores_matched_boxes_and_the_union_mask():
    result = veteran(grounding(B_TALL, A), truth_of(A, B))
    # Box rewards: A is exact (IoU and L1 both: 2); B_TALL has IoU 2/3 > 0.5 but mean L1 12.5 >= 10 (1). Two each.
    assert result["box"] == pytest.approx((2 + 1) / 2)
    union = box_to_mask(A, (840, 840)) | box_to_mask(B_TALL, (840, 840))
    gt = box_to_mask(A, (840, 840)) | box_to_mask(B, (840, 840))
    assert result["sam_iou"] == pytest.approx(edge_excluded_iou(union, gt))
    assert result["score"] == pytest.approx(2 + 1.5 + result["sam_iou"])
    assert result["sam_called"] == 2 and result["failure"] == ""


def test_veteran_grounding_a_correct_none_earns_everything_and_an_invented_box_nothing():
    none = veteran(grounding(), truth_of())
    assert (none["box"], none["sam_iou"], none["score"], none["sam_called"]) == (2.0, 1.0, 5.0, 0.0)
    invented = veteran(grounding(A), truth_of())
    assert (invented["box"], invented["sam_iou"], invented["score"]) == (0.0, 0.0, 2.0)
    missed = veteran(grounding(), truth_of(A))
    assert (missed["box"], missed["sam_iou"], missed["score"]) == (0.0, 0.0, 2.0)
    malformed = veteran(grounding(A, A), truth_of(A))
    assert (malformed["format_answer"], malformed["failure"], malformed["sam_called"]) == (0.0, "invalid_answer", 0.0)


def test_the_papers_rows_still_read_one_answer():
    """A row without ``objects`` keeps the papers' single-object answer: a list is not its format."""
    papers_truth = {"mask": encode_rle(box_to_mask(A, (840, 840))), "box": A}
    assert veteran(grounding(A), papers_truth)["failure"] == "no_answer"
    single = veteran(f"<think>t</think><answer>{json.dumps({'bbox_2d': A})}</answer>", papers_truth)
    assert single["box"] == 2.0 and single["failure"] == ""
