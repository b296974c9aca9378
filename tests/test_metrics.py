"""SegMetrics against the published evaluation code of LISA and of Seg-Zero, transcribed here as references."""

import math

import numpy as np
import pytest
import torch

from recipe.task.metrics import SegMetrics

# ------------------------------------------------------------------ LISA (utils/utils.py and test loop of validate())


def intersection_and_union_gpu(output, target, k, ignore_index=255):
    """LISA's ``intersectionAndUnionGPU``, verbatim but for float tensors (``torch.histc`` needs them on CPU)."""
    output = output.view(-1).clone()
    target = target.view(-1)
    output[target == ignore_index] = ignore_index
    intersection = output[output == target]
    area_intersection = torch.histc(intersection, bins=k, min=0, max=k - 1)
    area_output = torch.histc(output, bins=k, min=0, max=k - 1)
    area_target = torch.histc(target, bins=k, min=0, max=k - 1)
    area_union = area_output + area_target - area_intersection
    return area_intersection, area_union, area_target


def lisa_reference(samples):
    """LISA's ``validate``: per-sample ``acc_iou = I / (U + 1e-5)``, ``acc_iou[union == 0] += 1.0``; cIoU is
    ``sum I / (sum U + 1e-10)``; foreground is class 1. A failed answer predicts all background (LISA always has a
    mask; an empty one is what a missing answer means)."""
    total_i, total_u, ious = 0.0, 0.0, []
    for pred, gt in samples:
        output = torch.zeros(gt.shape) if pred is None else torch.from_numpy(pred.astype(np.float32))
        inter, union, _ = intersection_and_union_gpu(output, torch.from_numpy(gt.astype(np.float32)), 2, 255)
        acc_iou = inter / (union + 1e-5)
        acc_iou[union == 0] += 1.0
        total_i, total_u = total_i + float(inter[1]), total_u + float(union[1])
        ious.append(float(acc_iou[1]))
    return sum(ious) / len(ious), total_i / (total_u + 1e-10), len(ious)


# ------------------------------------------------------------------ Seg-Zero (evaluation_scripts/*.py)


def seg_zero_reference(samples):
    """Seg-Zero's ``evaluation.py`` then ``calculate_iou.py``: the GT cast to bool (ignore counted); an empty union
    skips the sample; a failed answer is I = 0, U = count of gt > 0, scored 0 when that union is 0."""
    outputs = []
    for pred, gt in samples:
        if pred is None:
            outputs.append((0, int(np.array(gt > 0).sum())))
            continue
        gt_bool = gt > 0
        intersection, union = int((pred & gt_bool).sum()), int((pred | gt_bool).sum())
        if union == 0:
            continue
        outputs.append((intersection, union))
    ious = [i / u if u > 0 else 0 for i, u in outputs]
    total_i, total_u = sum(i for i, _ in outputs), sum(u for _, u in outputs)
    return float(np.mean(ious)), total_i / total_u if total_u > 0 else 0, len(outputs)


def make_samples(seed: int, count: int = 60):
    """Random masks with ignore regions, failed answers, empty unions, all-ignore GTs and failures on empty GTs."""
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        shape = tuple(int(v) for v in rng.integers(5, 40, size=2))
        gt = (rng.random(shape) < rng.random()).astype(np.uint8)
        if index % 4 == 0:  # ReasonSeg-style ignore regions, partly predicted
            gt[rng.random(shape) < 0.2] = 255
        pred = rng.random(shape) < rng.random()
        if index % 7 == 0:
            pred = None  # failed answer
        if index % 11 == 0:
            gt[:] = 0  # empty target and empty prediction: union 0
            pred = np.zeros(shape, bool)
        if index % 13 == 0:
            gt[:] = 255  # all ignored, with a prediction inside it
            pred = rng.random(shape) < 0.5
        if index % 17 == 0:
            gt[:] = 0  # a failed answer on an empty target
            pred = None
        if index % 19 == 0:
            gt[:] = 255  # all ignored, nothing predicted
            pred = np.zeros(shape, bool)
        samples.append((pred, gt))
    return samples


def accumulated(samples, convention: str) -> dict:
    """The summary of ``SegMetrics(convention)`` after updating it with every ``(pred, gt)`` sample."""
    metrics = SegMetrics(convention)
    for pred, gt in samples:
        metrics.update(pred, gt)
    return metrics.summary()


@pytest.mark.parametrize("seed", [0, 1])
def test_lisa_convention_matches_lisas_evaluation(seed):
    samples = make_samples(seed)
    summary = accumulated(samples, "lisa")
    giou, ciou, n = lisa_reference(samples)
    assert summary["gIoU"] == pytest.approx(giou, rel=1e-5)  # LISA's 1e-5 in the denominator
    assert summary["cIoU"] == pytest.approx(ciou, rel=1e-9)
    assert summary["n"] == n == len(samples) and summary["n_dropped"] == 0
    assert summary["n_failed"] == sum(pred is None for pred, _ in samples)
    assert summary["convention"] == "lisa"


@pytest.mark.parametrize("seed", [0, 1])
def test_seg_zero_convention_matches_seg_zeros_evaluation(seed):
    samples = make_samples(seed)
    summary = accumulated(samples, "seg_zero")
    giou, ciou, n = seg_zero_reference(samples)
    assert summary["gIoU"] == pytest.approx(giou, rel=1e-12)
    assert summary["cIoU"] == pytest.approx(ciou, rel=1e-12)
    assert summary["n"] == n < len(samples)
    assert summary["n_dropped"] == len(samples) - n
    assert summary["convention"] == "seg_zero"


def test_the_conventions_differ_where_the_published_code_differs():
    gt = np.array([[1, 1, 0, 255], [0, 1, 0, 255]], np.uint8)
    pred = np.array([[1, 0, 1, 1], [0, 1, 0, 0]], bool)
    lisa, seg_zero = SegMetrics("lisa"), SegMetrics("seg_zero")
    assert counts(lisa.score(pred, gt)) == by_hand(pred, gt) == (2, 4, 0.5)
    assert counts(seg_zero.score(pred, gt)) == by_hand(pred, gt, ignore_is_target=True) == (3, 6, 0.5)
    empty = (np.zeros((1, 2), bool), np.zeros((1, 2), np.uint8))
    assert lisa.score(*empty).iou == 1.0 and seg_zero.score(*empty).iou is None
    assert lisa.score(None, empty[1]).iou == 1.0 and seg_zero.score(None, empty[1]).iou == 0.0
    assert lisa.target_area(gt) == 3 and seg_zero.target_area(gt) == 5


def counts(sample):
    return sample.intersection, sample.union, sample.iou


def by_hand(pred, gt, ignore_is_target=False):
    """(I, U, IoU) by hand-written set arithmetic, the ignore column either dropped or counted as target."""
    target = {(y, x) for y, x in zip(*np.nonzero(gt == 1), strict=True)}
    ignore = {(y, x) for y, x in zip(*np.nonzero(gt == 255), strict=True)}
    predicted = {(y, x) for y, x in zip(*np.nonzero(pred), strict=True)}
    if ignore_is_target:
        target |= ignore
    else:
        predicted -= ignore
    inter, union = len(predicted & target), len(predicted | target)
    return inter, union, inter / union


def test_bad_inputs_raise_clear_errors():
    metrics = SegMetrics()
    with pytest.raises(ValueError, match="labels must be 0, 1 or 255"):
        metrics.update(np.zeros((2, 2), bool), np.full((2, 2), 128, np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        metrics.update(np.zeros((2, 3), bool), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="unknown metrics convention"):
        SegMetrics("seg-zero")
    assert metrics.summary()["n"] == 0 and math.isnan(metrics.summary()["gIoU"])


def test_bool_gt_is_accepted():
    gt = np.array([[True, False]])
    assert SegMetrics().score(np.array([[True, True]]), gt).iou == 0.5
