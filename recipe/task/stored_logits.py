"""SAM2 low-resolution logits kept in a dataset row: little-endian float16 bytes with their shape.

Mask-comprehension rows keep the logits of the mask they show, so a refinement sends exactly that mask's logits as
``mask_input`` and needs one SAM2 call per rollout. float16 is what the reward server returns logits in
(``reward_server.engine``, clamped to [-32, 32]); it costs 128 KiB a row at SAM2's 256x256.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

STORED_DTYPE = np.dtype("<f2")


def encode_logits(logits: np.ndarray) -> dict[str, Any]:
    """``{"shape": [S, S], "data": bytes}`` of ``(S, S)`` or ``(1, S, S)`` logits, as float16."""
    array = np.asarray(logits)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected (S, S) or (1, S, S) float logits, got {array.dtype} {array.shape}")
    return {"shape": list(array.shape), "data": np.ascontiguousarray(array, STORED_DTYPE).tobytes()}


def decode_logits(stored: Mapping[str, Any]) -> np.ndarray:
    """The ``(S, S)`` float16 logits of :func:`encode_logits`.

    Raises:
        ValueError: When the shape is not two positive sizes or the bytes do not fill it.
    """
    shape = tuple(int(side) for side in stored["shape"])
    data = stored["data"]
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"stored logits need a 2-d shape, got {shape}")
    if len(data) != shape[0] * shape[1] * STORED_DTYPE.itemsize:
        raise ValueError(
            f"stored logits of shape {shape} need {shape[0] * shape[1]} float16 values, got {len(data)} bytes"
        )
    return np.frombuffer(data, STORED_DTYPE).reshape(shape).copy()  # writable, as torch.from_numpy expects
