"""Ground-truth label masks at the original resolution: 0 background, 1 target, 255 ignored (ReasonSeg)."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from data_prep.samples import SourceSample
from reward_server.masks import decode_rle

IGNORE = 255


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
    """LISA's ReasonSeg mask: polygons painted largest first, so smaller ones stay on top; "ignore" -> 255.

    Raises:
        ValueError: For polygons that are not lists of (x, y) pairs.
    """
    filled = []
    for shape in shapes:
        try:
            points = np.asarray(shape["points"], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"polygon points are not numbers: {err}") from err
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3 or not np.isfinite(points).all():
            raise ValueError("polygons must have at least 3 finite (x, y) points")
        # LISA casts to int32 and draws the outline as well as the interior.
        polygon = [points.astype(np.int32)]
        single = np.zeros((height, width), np.uint8)
        cv2.polylines(single, polygon, True, 1, 1)
        cv2.fillPoly(single, polygon, 1)
        value = IGNORE if "ignore" in shape["label"].lower() else 1
        filled.append((int(single.sum()), polygon, value))
    mask = np.zeros((height, width), np.uint8)
    for _, polygon, value in sorted(filled, key=lambda item: item[0], reverse=True):
        cv2.polylines(mask, polygon, True, value, 1)
        cv2.fillPoly(mask, polygon, value)
    return mask


def render_label_mask(sample: SourceSample, height: int, width: int) -> np.ndarray:
    """The sample's label mask at the image's original size."""
    if sample.lisa_shapes is not None:
        return render_lisa(sample.lisa_shapes, height, width)
    return render_coco(sample.coco_segmentation, height, width)
