"""Mask and box geometry shared by rewards, data preparation and evaluation.

Conventions (docs/conventions.md): masks are ``(H, W)`` arrays, boxes are ``[x1, y1, x2, y2]`` in pixel-edge
coordinates (inclusive-exclusive, floats allowed), points are ``(x, y)``, image sizes are ``(H, W)``.

OpenCV and torch are imported by the functions that use them: the answer parser needs only the constants and
:func:`clip_box`, and must not pay for importing either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils

if TYPE_CHECKING:
    import torch

MODEL_SIZE = 840
"""Side of the square image the VLM sees; every coordinate it emits or is shown lives in this space."""

DEFAULT_IGNORE_EDGE = 20
"""Kernel side of the edge-excluded IoU (SAM-Veteran, Figure 7); ``reward_server.engine.ignore_edge`` defaults to it."""


def _as_bool_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: pred {pred.shape} vs gt {gt.shape}")


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two binary masks.

    Args:
        pred: Predicted mask, ``(H, W)``, any dtype (non-zero is foreground).
        gt: Ground-truth mask of the same shape.

    Returns:
        IoU in ``[0, 1]``; 1.0 when both masks are empty.
    """
    pred, gt = _as_bool_mask(pred, "pred"), _as_bool_mask(gt, "gt")
    _check_same_shape(pred, gt)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def edge_ignore_mask(gt: np.ndarray, ignore_edge: int = DEFAULT_IGNORE_EDGE) -> np.ndarray:
    """Pixels near the ground-truth boundary, excluded from the training IoU (SAM-Veteran, Figure 7).

    Canny edges of the GT mask dilated once with an ``ignore_edge x ignore_edge`` kernel of ones. It depends on the
    GT alone, so callers compute it once per GT mask and pass it to :func:`edge_excluded_iou`.

    Args:
        gt: Ground-truth mask, ``(H, W)``.
        ignore_edge: Kernel side in pixels; ``<= 0`` ignores nothing.

    Returns:
        Boolean ``(H, W)`` mask of ignored pixels.
    """
    import cv2

    gt = _as_bool_mask(gt, "gt")
    if ignore_edge <= 0:
        return np.zeros(gt.shape, dtype=bool)
    edges = cv2.Canny(gt.astype(np.uint8) * 255, 100, 200)
    kernel = np.ones((ignore_edge, ignore_edge), np.uint8)
    return cv2.dilate(edges, kernel, iterations=1).astype(bool)


def edge_excluded_iou(
    pred: np.ndarray,
    gt: np.ndarray,
    ignore_edge: int = DEFAULT_IGNORE_EDGE,
    ignore: np.ndarray | None = None,
) -> float:
    """IoU with the pixels near the GT boundary removed from both masks (SAM-Veteran, Figure 7).

    Args:
        pred: Predicted mask, ``(H, W)``.
        gt: Ground-truth mask of the same shape.
        ignore_edge: Kernel side for :func:`edge_ignore_mask`; unused when ``ignore`` is given.
        ignore: Precomputed ``edge_ignore_mask(gt, ignore_edge)``, to skip recomputing it per call.

    Returns:
        IoU of the remaining pixels; 1.0 when their union is empty.
    """
    pred, gt = _as_bool_mask(pred, "pred"), _as_bool_mask(gt, "gt")
    _check_same_shape(pred, gt)
    keep = ~(edge_ignore_mask(gt, ignore_edge) if ignore is None else _as_bool_mask(ignore, "ignore"))
    _check_same_shape(keep, gt)
    pred, gt = pred & keep, gt & keep
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def _as_boxes(boxes: Any) -> torch.Tensor:
    import torch

    tensor = torch.as_tensor(np.asarray(boxes, dtype=np.float64))
    if tensor.ndim == 1:
        tensor = tensor[None]
    if tensor.ndim != 2 or tensor.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (4,) or (N, 4), got {tuple(tensor.shape)}")
    return tensor


def box_iou(boxes1: Any, boxes2: Any) -> np.ndarray:
    """Pairwise IoU of xyxy boxes.

    Args:
        boxes1: ``(N, 4)`` or ``(4,)`` boxes.
        boxes2: ``(M, 4)`` or ``(4,)`` boxes.

    Returns:
        ``(N, M)`` float64 array of IoUs.
    """
    from torchvision.ops import box_iou as _torchvision_box_iou

    return _torchvision_box_iou(_as_boxes(boxes1), _as_boxes(boxes2)).numpy()


def box_mean_l1(box1: Sequence[float], box2: Sequence[float]) -> float:
    """Mean absolute difference of the four coordinates of two xyxy boxes."""
    a, b = _as_boxes(box1), _as_boxes(box2)
    if a.shape[0] != 1 or b.shape[0] != 1:
        raise ValueError("box_mean_l1 takes single boxes")
    return float((a - b).abs().mean())


def mask_to_box(mask: np.ndarray) -> list[float] | None:
    """Tight xyxy box of a mask in pixel-edge coordinates, or None for an empty mask."""
    mask = _as_bool_mask(mask, "mask")
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def box_to_mask(box: Sequence[float], image_hw: tuple[int, int]) -> np.ndarray:
    """The filled xyxy box in pixel-edge coordinates: the pixels whose centres lie in ``[x1, x2) x [y1, y2)``.

    The inverse of :func:`mask_to_box` on integer boxes; a box outside the image or degenerate gives an empty mask.
    """
    height, width = image_hw
    x1, y1, x2, y2 = (float(v) for v in box)
    xs = np.arange(width) + 0.5
    ys = np.arange(height) + 0.5
    return ((ys >= y1) & (ys < y2))[:, None] & ((xs >= x1) & (xs < x2))[None, :]


def clip_box(box: Sequence[float], image_hw: tuple[int, int]) -> list[float]:
    """Clips an xyxy box to the image ``[0, W] x [0, H]``; the result may be degenerate."""
    height, width = float(image_hw[0]), float(image_hw[1])
    x1, y1, x2, y2 = (float(v) for v in box)
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encodes a binary mask as compressed COCO RLE with ``counts`` as str (JSON and parquet friendly)."""
    mask = _as_bool_mask(mask, "mask")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _compressed_counts(counts: bytes) -> list[int]:
    """Run lengths of a compressed COCO RLE string (the format of pycocotools' ``rleFrString``)."""
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                raise ValueError("malformed RLE: truncated counts string")
            char = counts[pos] - 48
            if not 0 <= char < 64:
                raise ValueError(f"malformed RLE: byte {counts[pos]!r} at {pos} is not a counts character")
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            pos += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decodes COCO RLE (compressed ``counts`` as str or bytes, or uncompressed as a list) to a bool mask.

    The counts are validated first: pycocotools' C decoder trusts them and would write past the mask buffer.

    Raises:
        ValueError: When the RLE is malformed (missing keys, bad size, counts that do not cover the image exactly).
    """
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"malformed RLE: expected {{'size': [H, W], 'counts': ...}}, got {rle!r:.200}") from err
    if height < 0 or width < 0:
        raise ValueError(f"malformed RLE: negative size {[height, width]}")
    if isinstance(counts, str):
        counts = counts.encode("ascii", errors="replace")
    if isinstance(counts, bytes):
        runs = _compressed_counts(counts)
    elif isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        runs = counts
    else:
        raise ValueError(f"malformed RLE: counts must be str, bytes or a list of ints, got {type(counts).__name__}")
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise ValueError(f"malformed RLE: run lengths must be non-negative and sum to H*W = {height * width}")
    if isinstance(counts, list):
        compressed = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        compressed = {"size": [height, width], "counts": counts}
    return mask_utils.decode(compressed).astype(bool)


def resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label mask, keeping its dtype and values (e.g. 255 = ignore).

    Uses OpenCV's exact nearest neighbour (pixel centres map to pixel centres, as in PIL), not the legacy
    ``INTER_NEAREST`` whose half-pixel shift moves masks up and left.
    """
    import cv2

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    height, width = size_hw
    if mask.shape == (height, width):
        return mask.copy()
    source = mask.astype(np.uint8) if mask.dtype == bool else mask
    resized = cv2.resize(source, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return resized.astype(bool) if mask.dtype == bool else resized


def scale_xy(coords: Any, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Maps ``(x, y, x, y, ...)`` coordinates from one image size to another.

    Works for points ``(..., 2)`` and xyxy boxes ``(..., 4)``: even positions are x, odd ones y.

    Args:
        coords: Array-like whose last dimension has even length.
        src_hw: ``(H, W)`` of the space the coordinates are in.
        dst_hw: ``(H, W)`` of the target space.

    Returns:
        float64 array of the same shape.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim == 0 or coords.shape[-1] % 2:
        raise ValueError(f"coordinates must end in (x, y) pairs, got shape {coords.shape}")
    scale = np.array([dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0]])
    return (coords.reshape(*coords.shape[:-1], -1, 2) * scale).reshape(coords.shape)


def model_to_original(coords: Any, orig_hw: tuple[int, int], model_size: int = MODEL_SIZE) -> np.ndarray:
    """Maps model-space coordinates (``model_size`` square) to the original image: ``x * W / 840``, ``y * H / 840``."""
    return scale_xy(coords, (model_size, model_size), orig_hw)


def original_to_model(coords: Any, orig_hw: tuple[int, int], model_size: int = MODEL_SIZE) -> np.ndarray:
    """Maps original-image coordinates to the ``model_size`` square the VLM sees."""
    return scale_xy(coords, orig_hw, (model_size, model_size))


def region_center(region: np.ndarray) -> tuple[float, float] | None:
    """The point a click on this region should aim at: its centroid, or, when the centroid falls outside the region
    (a ring, a crescent), the region pixel farthest from the region's boundary.

    Args:
        region: ``(H, W)`` mask of one error region.

    Returns:
        ``(x, y)`` in pixel coordinates (pixel centres are integers), or None for an empty region.
    """
    import cv2

    region = _as_bool_mask(region, "region")
    ys, xs = np.nonzero(region)
    if xs.size == 0:
        return None
    cx, cy = float(xs.mean()), float(ys.mean())
    if region[round(cy), round(cx)]:
        return cx, cy
    # Distance to the nearest non-region pixel; padding makes the image border count as boundary.
    distance = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(x), float(y)
