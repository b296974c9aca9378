"""Ground-truth label masks at the original resolution: 0 background, 1 target, 255 ignored (ReasonSeg)."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from data_prep.samples import SourceSample
from recipe.task.dataset_rows import IGNORE_LABEL
from reward_server.masks import decode_rle


def render_coco(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed RLE or compressed RLE) as a uint8 0/1 mask, via pycocotools.

    Raises:
        ValueError: For malformed segmentations (polygons with fewer than 3 points or non-finite coordinates,
            RLE whose size differs from the image, corrupt counts).
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list)]
        if not polygons or any(
            len(p) < 6 or len(p) % 2 or not all(isinstance(v, int | float) and math.isfinite(v) for v in p)
            for p in polygons
        ):
            raise ValueError("polygons must be lists of at least 3 finite (x, y) pairs")
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(np.uint8)
    if isinstance(segmentation, dict):
        if [int(v) for v in segmentation.get("size", ())] != [height, width]:
            raise ValueError(f"RLE size {segmentation.get('size')} differs from the image {[height, width]}")
        return decode_rle(segmentation).astype(np.uint8)
    raise ValueError(f"unknown segmentation type {type(segmentation).__name__}")


def render_lisa(shapes: tuple[dict[str, Any], ...], height: int, width: int) -> np.ndarray:
    """LISA's ReasonSeg mask (``get_mask_from_json``): polygons painted largest first, so smaller ones stay on top;
    labels containing "ignore" -> 255, others -> 1.

    Raises:
        ValueError: For shapes without points or with points that are not finite (x, y) numbers.
    """
    polygons, values, areas = [], [], []
    for shape in shapes:
        try:
            points = np.asarray(shape["points"], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"polygon points are not numbers: {err}") from err
        # One or two points are drawn too (as a dot or a line), as LISA's cv2 calls draw them.
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 1 or not np.isfinite(points).all():
            raise ValueError("polygons must have at least 1 finite (x, y) point")
        # LISA casts to int32 (truncation) and draws the outline as well as the interior.
        polygon = [points.astype(np.int32)]
        single = np.zeros((height, width), np.uint8)
        cv2.polylines(single, polygon, True, 1, 1)
        cv2.fillPoly(single, polygon, 1)
        polygons.append(polygon)
        values.append(IGNORE_LABEL if "ignore" in shape["label"].lower() else 1)
        areas.append(int(single.sum()))
    # LISA paints in the order np.argsort(area_list)[::-1]: ascending, then reversed, so among equal areas the
    # first-listed shape is painted last and stays on top. np.argsort's default quicksort was stable for LISA's
    # small lists under its pinned numpy (1.24: insertion sort up to 17 elements), but numpy >= 1.25 may dispatch
    # to an unstable SIMD sort (AVX-512), which reorders ties of as few as 4; "stable" pins LISA's order.
    mask = np.zeros((height, width), np.uint8)
    for index in np.argsort(np.asarray(areas, dtype=np.int64), kind="stable")[::-1]:
        cv2.polylines(mask, polygons[index], True, values[index], 1)
        cv2.fillPoly(mask, polygons[index], values[index])
    return mask


def render_objects(sample: SourceSample, height: int, width: int) -> tuple[list[np.ndarray], np.ndarray]:
    """A generalized sample's objects (COCO segmentations) as bool masks, and its label mask: their union, as
    gRefCOCO's ``getMaskByRef(merge=True)`` builds it (all zero for no target).

    Raises:
        ValueError: For a malformed segmentation (:func:`render_coco`) or an object of zero area.
    """
    masks = [render_coco(segmentation, height, width).astype(bool) for segmentation in sample.objects or ()]
    return masks, union_labels(masks, height, width)


def union_labels(masks: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """The uint8 label mask (0, 1) of the union of object masks.

    Raises:
        ValueError: When an object has zero area (it would be counted but could never be found).
    """
    labels = np.zeros((height, width), np.uint8)
    for number, mask in enumerate(masks, 1):
        if not mask.any():
            raise ValueError(f"object {number} has zero area")
        labels[mask] = 1
    return labels


def render_label_mask(sample: SourceSample, height: int, width: int) -> np.ndarray:
    """The sample's label mask at the image's original size."""
    if sample.lisa_shapes is not None:
        return render_lisa(sample.lisa_shapes, height, width)
    return render_coco(sample.coco_segmentation, height, width)
