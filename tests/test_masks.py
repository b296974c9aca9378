"""Geometry against independent references: the paper's Figure 7 code, pycocotools, PIL and hand formulas."""

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from reward_server.masks import (
    box_iou,
    box_mean_l1,
    clip_box,
    decode_rle,
    edge_excluded_iou,
    edge_ignore_mask,
    encode_rle,
    mask_iou,
    mask_to_box,
    model_to_original,
    original_to_model,
    resize_mask,
)


def figure7_compute_iou(pred_mask: np.ndarray, gt_mask: np.ndarray, ignore_edge: int = 20) -> float:
    """SAM-Veteran, Figure 7, verbatim (the reference for edge_excluded_iou)."""
    pred_mask = pred_mask.astype(bool)
    gt_mask = gt_mask.astype(bool)
    if ignore_edge > 0:
        edges = cv2.Canny(gt_mask.astype(np.uint8) * 255, 100, 200)
        kernel = np.ones((ignore_edge, ignore_edge), np.uint8)
        ignore_mask = cv2.dilate(edges, kernel, iterations=1).astype(bool)
    else:
        ignore_mask = np.zeros_like(gt_mask, dtype=bool)
    valid_pred = np.logical_and(pred_mask, ~ignore_mask)
    valid_gt = np.logical_and(gt_mask, ~ignore_mask)
    intersection = np.logical_and(valid_pred, valid_gt).sum()
    union = np.logical_or(valid_pred, valid_gt).sum()
    if union == 0:
        return 1
    return intersection / union


def random_blob_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A mask of a few random ellipses and rectangles: realistic edges for Canny."""
    mask = np.zeros(shape, np.uint8)
    height, width = shape
    for _ in range(rng.integers(1, 4)):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(1, width // 2 + 2)), int(rng.integers(1, height // 2 + 2)))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    if rng.random() < 0.5:
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        mask[y : y + int(rng.integers(1, height + 1)), x : x + int(rng.integers(1, width + 1))] ^= 1
    return mask.astype(bool)


def mask_pairs(seed: int, count: int, shape: tuple[int, int] = (96, 128)):
    rng = np.random.default_rng(seed)
    empty, full = np.zeros(shape, bool), np.ones(shape, bool)
    yield from [(empty, empty), (empty, full), (full, empty), (full, full)]
    for _ in range(count):
        gt = random_blob_mask(rng, shape)
        pred = gt.copy() if rng.random() < 0.2 else random_blob_mask(rng, shape)
        if rng.random() < 0.3:  # a near-miss: the GT with a shifted border
            pred = np.roll(gt, int(rng.integers(-6, 7)), axis=int(rng.integers(0, 2)))
        yield pred, gt


@pytest.mark.parametrize("ignore_edge", [0, 1, 5, 20, 33])
def test_edge_excluded_iou_equals_figure7(ignore_edge):
    for pred, gt in mask_pairs(seed=ignore_edge, count=60):
        expected = figure7_compute_iou(pred, gt, ignore_edge)
        assert edge_excluded_iou(pred, gt, ignore_edge) == pytest.approx(expected, abs=0, rel=1e-12)
        cached = edge_ignore_mask(gt, ignore_edge)
        assert edge_excluded_iou(pred, gt, ignore=cached) == pytest.approx(expected, abs=0, rel=1e-12)


def test_edge_ignore_mask_depends_on_gt_only_and_ignores_nothing_at_zero():
    rng = np.random.default_rng(0)
    gt = random_blob_mask(rng, (64, 64))
    assert np.array_equal(edge_ignore_mask(gt), edge_ignore_mask(gt.astype(np.uint8)))
    assert not edge_ignore_mask(gt, 0).any()
    assert edge_ignore_mask(gt, 20).any() or not gt.any() or gt.all()


def test_mask_iou_equals_pycocotools_on_non_empty_pairs():
    checked = 0
    for pred, gt in mask_pairs(seed=1, count=80):
        if not pred.any() or not gt.any():
            continue
        rle_pred = mask_utils.encode(np.asfortranarray(pred.astype(np.uint8)))
        rle_gt = mask_utils.encode(np.asfortranarray(gt.astype(np.uint8)))
        expected = mask_utils.iou([rle_pred], [rle_gt], [0])[0, 0]
        assert mask_iou(pred, gt) == pytest.approx(expected, rel=1e-12)
        checked += 1
    assert checked > 50


def test_mask_iou_edge_cases():
    empty = np.zeros((4, 5), bool)
    assert mask_iou(empty, empty) == 1.0
    assert mask_iou(empty, ~empty) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(empty, np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match="2-D"):
        mask_iou(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))


def test_box_iou_and_mean_l1_match_hand_formulas():
    a, b = [0, 0, 10, 10], [5, 5, 15, 25]
    inter, union = 5 * 5, 100 + 200 - 25
    assert box_iou(a, b)[0, 0] == pytest.approx(inter / union)
    assert box_iou([a, b], [b]).shape == (2, 1)
    assert box_mean_l1(a, b) == pytest.approx((5 + 5 + 5 + 15) / 4)
    with pytest.raises(ValueError):
        box_iou([1, 2, 3], [1, 2, 3, 4])


def test_mask_to_box_and_clip_box():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert mask_to_box(mask) == [3.0, 2.0, 9.0, 5.0]
    assert mask_to_box(np.zeros((3, 3), bool)) is None
    assert clip_box([-5, 2, 900, 1000], (840, 840)) == [0.0, 2.0, 840.0, 840.0]


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (96, 128)])
def test_rle_round_trip_matches_pycocotools(shape):
    for pred, _ in mask_pairs(seed=2, count=10, shape=shape):
        rle = encode_rle(pred)
        assert isinstance(rle["counts"], str) and rle["size"] == list(shape)
        assert np.array_equal(decode_rle(rle), pred)
        reference = mask_utils.encode(np.asfortranarray(pred.astype(np.uint8)))
        assert rle["counts"].encode() == reference["counts"]


def test_decode_rle_accepts_uncompressed_and_bytes():
    mask = np.zeros((3, 4), bool)
    mask[1, 1:3] = True
    column_major_runs = [4, 1, 2, 1, 4]  # COCO RLE runs go down columns first
    assert np.array_equal(decode_rle({"size": [3, 4], "counts": column_major_runs}), mask)
    rle = encode_rle(mask)
    assert np.array_equal(decode_rle({"size": rle["size"], "counts": rle["counts"].encode()}), mask)


@pytest.mark.parametrize(
    "rle",
    [
        {},
        {"size": [3, 3]},
        {"size": [3, 3], "counts": "zz"},
        {"size": [3, 3], "counts": "0"},
        {"size": [3, 3], "counts": [1, 2]},
        {"size": [3, 3], "counts": [10, -1]},
        {"size": [3, 3], "counts": 7},
        {"size": "big", "counts": ""},
        {"size": [-1, 3], "counts": ""},
    ],
)
def test_decode_rle_rejects_malformed_input_with_a_reason(rle):
    with pytest.raises(ValueError, match="malformed RLE"):
        decode_rle(rle)


@settings(max_examples=300, deadline=None)
@given(counts=st.binary(max_size=40), height=st.integers(0, 20), width=st.integers(0, 20))
def test_decode_rle_on_arbitrary_bytes_never_overflows(counts, height, width):
    """pycocotools trusts its counts; decode_rle must reject any string whose runs do not tile the image."""
    try:
        mask = decode_rle({"size": [height, width], "counts": counts})
    except ValueError:
        return
    assert mask.shape == (height, width)


def test_resize_mask_matches_pil_nearest_and_keeps_labels():
    rng = np.random.default_rng(3)
    labels = rng.choice(np.array([0, 1, 255], np.uint8), size=(37, 53))
    for size_hw in [(840, 840), (20, 31), (37, 53)]:
        resized = resize_mask(labels, size_hw)
        reference = np.array(Image.fromarray(labels).resize(size_hw[::-1], Image.Resampling.NEAREST))
        assert resized.dtype == np.uint8 and resized.shape == size_hw
        assert np.array_equal(resized, reference)
    boolean = labels == 1
    assert resize_mask(boolean, (840, 840)).dtype == bool


def test_coordinate_mapping_between_model_space_and_original():
    orig_hw = (480, 640)
    box = [84, 420, 840, 840]
    assert model_to_original(box, orig_hw).tolist() == [64.0, 240.0, 640.0, 480.0]
    point = [[420, 210]]
    assert model_to_original(point, orig_hw).tolist() == [[320.0, 120.0]]
    rng = np.random.default_rng(4)
    coords = rng.uniform(0, 840, size=(5, 4))
    assert np.allclose(original_to_model(model_to_original(coords, orig_hw), orig_hw), coords)
    with pytest.raises(ValueError):
        model_to_original([1, 2, 3], orig_hw)
