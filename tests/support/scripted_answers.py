"""Well-formed answers to a data_prep row, per mode, for tests that script the policy (infer, the demo page)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def answer(payload: dict[str, Any]) -> str:
    """A response with reasoning and ``payload`` as its JSON answer."""
    return f"<think>it is near the middle</think><answer>{json.dumps(payload)}</answer>"


def coco_decode(rle: dict[str, Any]) -> np.ndarray:
    """A COCO RLE with string counts, decoded by pycocotools."""
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def scripts(row: dict[str, Any]) -> dict[str, list[str]]:
    """Per mode, the answers of every turn for ``row``: SAM-R1's box and point; SAM-Veteran's box, a refinement
    with both clicks, then a stop."""
    x1, y1, x2, y2 = (round(v) for v in row["reward_model"]["ground_truth"]["box"])
    centre = [(x1 + x2) // 2, (y1 + y2) // 2]
    return {
        "samr1": [answer({"bbox_2d": [x1, y1, x2, y2], "point_2d": centre, "label": "it"})],
        "veteran": [
            answer({"bbox_2d": [x1 + 3, y1 - 2, x2 - 4, y2 + 5]}),
            answer({"pos_point": centre, "neg_point": [x1 + 1, y1 + 1]}),
            answer({"pos_point": None, "neg_point": None}),
        ],
    }
