"""Image inputs as RGB arrays: the one conversion used by the SAM2 engine, overlays and reports."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

ImageData = np.ndarray | bytes
"""An RGB uint8 ``(H, W, 3)`` array, or encoded image bytes (PNG, JPEG, ...)."""


def to_rgb(image: ImageData | Image.Image) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` array from an array (gray, RGB or RGBA), a PIL image or encoded bytes.

    Raises:
        ValueError: When the bytes are not a decodable image or the array is not a uint8 image.
    """
    if isinstance(image, bytes):
        try:
            with Image.open(io.BytesIO(image)) as decoded:
                return np.array(decoded.convert("RGB"))
        except Exception as err:  # PIL raises many types for corrupt data
            raise ValueError(f"undecodable image bytes ({len(image)} bytes): {err}") from err
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")
    return np.array(array[..., :3], order="C")  # always a copy: callers draw on the result
