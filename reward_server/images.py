"""Image inputs as RGB arrays: the one conversion used by the SAM2 engine, overlays and reports; and the 840x840
JPEG the model sees, built once for data preparation and single-image inference."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from reward_server.masks import MODEL_SIZE

MODEL_IMAGE_JPEG_QUALITY = 95

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


def model_image_jpeg(image: Image.Image) -> bytes:
    """The image the model sees, as rows store it: bicubic resize to ``MODEL_SIZE`` square, JPEG at quality 95."""
    buffer = io.BytesIO()
    image.resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.BICUBIC).save(
        buffer, format="JPEG", quality=MODEL_IMAGE_JPEG_QUALITY
    )
    return buffer.getvalue()
