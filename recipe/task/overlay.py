"""What the VLM is shown of a mask (SAM-Veteran's green overlay), and drawing helpers for visual reports.

Images are ``(H, W, 3)`` uint8 RGB arrays; every function returns a new array and leaves its input untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from reward_server.images import to_rgb

MASK_COLOR = (0, 255, 0)
MASK_ALPHA = 0.5
POSITIVE_COLOR = (30, 144, 255)
NEGATIVE_COLOR = (255, 40, 40)
BOX_COLOR = (255, 200, 0)


def overlay_mask(
    image: Image.Image | np.ndarray,
    mask: np.ndarray,
    color: Sequence[int] = MASK_COLOR,
    alpha: float = MASK_ALPHA,
) -> np.ndarray:
    """Blends ``color`` into the image inside the mask: ``(1 - alpha) * pixel + alpha * color``.

    With the defaults this is the semi-transparent green overlay the model sees in refinement turns. Values are
    rounded half to even; pixels outside the mask are unchanged.

    Args:
        image: RGB image.
        mask: ``(H, W)`` mask of the image's size.
        color: RGB blend color.
        alpha: Blend weight of the color.
    """
    out = to_rgb(image)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != out.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {out.shape[:2]}")
    blended = (1.0 - alpha) * out[mask].astype(np.float64) + alpha * np.asarray(color, dtype=np.float64)
    out[mask] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def _thickness(image: np.ndarray) -> int:
    return max(1, round(max(image.shape[:2]) / 300))


def draw_box(
    image: Image.Image | np.ndarray, box: Sequence[float], color: Sequence[int] = BOX_COLOR, thickness: int = 0
) -> np.ndarray:
    """Draws an xyxy box outline; ``thickness`` 0 scales with the image size."""
    out = to_rgb(image)
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    # xyxy edges are exclusive at x2/y2; cv2 draws inclusive pixel coordinates.
    cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), tuple(int(c) for c in color), thickness or _thickness(out))
    return out


def draw_points(
    image: Image.Image | np.ndarray,
    points: Sequence[Sequence[float]],
    labels: Sequence[int],
    radius: int = 0,
) -> np.ndarray:
    """Draws SAM clicks: positive (label 1) as blue discs with "+", negative (label 0) as red discs with "-".

    Args:
        image: RGB image.
        points: ``(x, y)`` points in the image's pixel coordinates.
        labels: 1 for positive, 0 for negative, one per point.
        radius: Disc radius; 0 scales with the image size.
    """
    if len(points) != len(labels):
        raise ValueError(f"{len(points)} points but {len(labels)} labels")
    out = to_rgb(image)
    radius = radius or 3 * _thickness(out) + 3
    for (x, y), label in zip(points, labels, strict=True):
        center = (round(float(x)), round(float(y)))
        color = POSITIVE_COLOR if label == 1 else NEGATIVE_COLOR
        cv2.circle(out, center, radius + 1, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, center, radius, color, -1, cv2.LINE_AA)
        arm = max(1, radius // 2)
        cv2.line(out, (center[0] - arm, center[1]), (center[0] + arm, center[1]), (255, 255, 255), 1, cv2.LINE_AA)
        if label == 1:
            cv2.line(out, (center[0], center[1] - arm), (center[0], center[1] + arm), (255, 255, 255), 1, cv2.LINE_AA)
    return out


def draw_mask_outline(
    image: Image.Image | np.ndarray, mask: np.ndarray, color: Sequence[int] = (255, 255, 255), thickness: int = 0
) -> np.ndarray:
    """Draws the outline of a mask (e.g. the ground truth next to a filled prediction)."""
    out = to_rgb(image)
    mask = np.asarray(mask).astype(np.uint8)
    if mask.shape != out.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {out.shape[:2]}")
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), thickness or _thickness(out))
    return out
