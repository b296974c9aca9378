"""SegMetrics against a reference written the way LISA computes it (per-class histograms, ignore relabelled)."""

import math

import numpy as np
import pytest

from recipe.common.metrics import SegMetrics


def lisa_intersection_and_union(pred: np.ndarray | None, gt: np.ndarray) -> tuple[int, int]:
    """LISA's intersectionAndUnion for K=2 classes, foreground entry; a failed answer predicts all background."""
    output = np.zeros(gt.shape, np.int64) if pred is None else pred.astype(np.int64)
    target = gt.astype(np.int64)
    output[target == 255] = 255
    hit = output[output == target]
    area_intersection = np.bincount(hit[hit < 2], minlength=2)
    area_output = np.bincount(output[output < 2].ravel(), minlength=2)
    area_target = np.bincount(target[target < 2].ravel(), minlength=2)
    return int(area_intersection[1]), int(area_output[1] + area_target[1] - area_intersection[1])


def reference_summary(samples, empty_union_score=1.0):
    per_sample, total_i, total_u = [], 0, 0
    for pred, gt in samples:
        inter, union = lisa_intersection_and_union(pred, gt)
        per_sample.append(inter / union if union else empty_union_score)
        total_i, total_u = total_i + inter, total_u + union
    return sum(per_sample) / len(per_sample), total_i / total_u


def make_samples(seed: int, count: int = 40):
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        shape = tuple(rng.integers(5, 40, size=2))
        gt = (rng.random(shape) < rng.random()).astype(np.uint8)
        if index % 4 == 0:  # ReasonSeg-style ignore regions
            gt[rng.random(shape) < 0.2] = 255
        pred = rng.random(shape) < rng.random()
        if index % 7 == 0:
            pred = None  # failed answer
        if index % 11 == 0:
            gt[gt == 1] = 0  # empty target
            pred = np.zeros(shape, bool)  # and empty prediction: union 0
        samples.append((pred, gt))
    return samples


@pytest.mark.parametrize("seg_zero", [False, True])
def test_matches_lisa_reference_with_ignore_failed_and_empty_unions(seg_zero):
    samples = make_samples(seed=int(seg_zero))
    metrics = SegMetrics(seg_zero_compatible=seg_zero)
    for pred, gt in samples:
        metrics.update(pred, gt)
    giou, ciou = reference_summary(samples, empty_union_score=0.0 if seg_zero else 1.0)
    summary = metrics.summary()
    assert summary["gIoU"] == pytest.approx(giou, rel=1e-12)
    assert summary["cIoU"] == pytest.approx(ciou, rel=1e-12)
    assert summary["n"] == len(samples)
    assert summary["n_failed"] == sum(pred is None for pred, _ in samples)
    assert summary["convention"] == ("seg-zero" if seg_zero else "lisa")


def test_hand_computed_example():
    gt = np.array([[1, 1, 0, 255], [0, 1, 0, 255]], np.uint8)
    pred = np.array([[1, 0, 1, 1], [0, 1, 0, 1]], bool)  # the 255 column is predicted but ignored
    metrics = SegMetrics()
    first = metrics.update(pred, gt)
    assert (first.intersection, first.union, first.iou) == (2, 4, 0.5)
    failed = metrics.update(None, gt)
    assert (failed.intersection, failed.union, failed.iou) == (0, 3, 0.0)
    empty = metrics.update(np.zeros((1, 2), bool), np.zeros((1, 2), np.uint8))
    assert (empty.union, empty.iou) == (0, 1.0)
    summary = metrics.summary()
    assert summary["gIoU"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert summary["cIoU"] == pytest.approx(2 / 7)
    assert SegMetrics(seg_zero_compatible=True).score(np.zeros((1, 2), bool), np.zeros((1, 2), np.uint8)).iou == 0.0


def test_merge_equals_one_pass():
    samples = make_samples(seed=5)
    whole, left, right = SegMetrics(), SegMetrics(), SegMetrics()
    for index, (pred, gt) in enumerate(samples):
        whole.update(pred, gt)
        (left if index % 2 else right).update(pred, gt)
    left.merge(right)
    assert left.summary() == pytest.approx(whole.summary())
    with pytest.raises(ValueError, match="conventions"):
        left.merge(SegMetrics(seg_zero_compatible=True))


def test_bad_inputs_raise_clear_errors():
    metrics = SegMetrics()
    with pytest.raises(ValueError, match="labels must be 0, 1 or 255"):
        metrics.update(np.zeros((2, 2), bool), np.full((2, 2), 128, np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        metrics.update(np.zeros((2, 3), bool), np.zeros((2, 2), np.uint8))
    assert metrics.summary()["n"] == 0 and math.isnan(metrics.summary()["gIoU"])


def test_bool_gt_is_accepted():
    gt = np.array([[True, False]])
    assert SegMetrics().score(np.array([[True, True]]), gt).iou == 0.5
