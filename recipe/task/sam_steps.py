"""What SAM2 was asked and answered in one rollout, carried from the reward path to the training gallery.

The reward path adds ``sam_steps`` to every response's ``reward_extra_info``: a JSON string (verl's validation
metrics skip strings, and a string is stored as it is by TransferQueue) holding one record per SAM2 call, in order,
each in the image the reward segmented (the model's 840x840 image in training):

- ``prompt``: ``box`` (xyxy or None), ``points`` and ``labels`` (1 positive, 0 negative), or None;
- ``mask``: SAM2's mask as COCO RLE, or None when SAM2 failed or was not called;
- ``iou``: the IoU the reward used (edge-excluded for SAM-Veteran), or None;
- ``error``: SAM2's error code when it failed, else None.

The gallery draws these records; it never calls SAM2 again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from reward_server.protocol import Prompt, SegResult

SAM_STEPS = "sam_steps"
"""The ``reward_extra_info`` key holding the records."""


def prompt_json(prompt: Prompt | None) -> dict[str, Any] | None:
    """A SAM2 prompt as JSON (``box``, ``points``, ``labels`` in the segmented image's pixels), or None."""
    if prompt is None:
        return None
    return {
        "box": None if prompt.box is None else [float(v) for v in prompt.box],
        "points": [[float(x), float(y)] for x, y in prompt.points],
        "labels": [int(label) for label in prompt.labels],
    }


def step_json(prompt: Prompt | None, result: SegResult | None, iou: float | None = None) -> dict[str, Any]:
    """One SAM2 call's record: the prompt, and the mask and ``iou`` when ``result`` is a mask."""
    ok = result is not None and result.ok
    return {
        "prompt": prompt_json(prompt),
        "mask": result.mask if ok else None,
        "iou": None if not ok or iou is None else float(iou),
        "error": None if result is None or ok else str(result.code),
    }


def encode_steps(steps: Iterable[dict[str, Any]]) -> str:
    """The records as the compact JSON string stored under :data:`SAM_STEPS`."""
    return json.dumps(list(steps), separators=(",", ":"))


def decode_steps(text: Any) -> list[dict[str, Any]]:
    """The records of a :data:`SAM_STEPS` value.

    Raises:
        ValueError: When ``text`` is not such a string (a reward function that does not record its SAM2 calls).
    """
    if not isinstance(text, str):
        raise ValueError(f"{SAM_STEPS} is {type(text).__name__}, not a JSON string")
    steps = json.loads(text)
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise ValueError(f"{SAM_STEPS} is not a JSON list of records")
    return steps
