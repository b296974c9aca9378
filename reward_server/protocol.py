"""What travels between clients and SAM2 actors: prompts, requests, results and content keys.

Everything here is small and picklable: images travel once per actor (keyed by a content hash), ground truths as
COCO RLE, masks come back as RLE and logits as float16, never as full float masks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from PIL import Image

from reward_server.images import ImageData, to_rgb
from reward_server.masks import decode_rle


class ErrorCode(StrEnum):
    """Why a request got no mask. Every code is counted in the actor's metrics."""

    BAD_PROMPT = "bad_prompt"
    BAD_IMAGE = "bad_image"
    BAD_GT = "bad_gt"
    UNKNOWN_IMAGE = "unknown_image"
    UNKNOWN_GT = "unknown_gt"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


RESENDABLE = frozenset({ErrorCode.UNKNOWN_IMAGE, ErrorCode.UNKNOWN_GT})
"""Codes a client answers by sending the image or ground truth again (e.g. after an actor restart)."""


@dataclass(frozen=True)
class Prompt:
    """One SAM2 prompt in the image's pixel coordinates.

    Attributes:
        box: ``[x1, y1, x2, y2]``, clipped to the image by the engine.
        points: ``(x, y)`` clicks.
        labels: One per point: 1 positive, 0 negative.
        mask_input: Previous low-resolution logits, ``(S, S)`` or ``(1, S, S)`` with ``S`` the engine's
            ``mask_input_size`` (256 for SAM2 at 1024).
    """

    box: tuple[float, ...] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    mask_input: np.ndarray | None = field(default=None, compare=False)

    @classmethod
    def from_clicks(
        cls,
        pos: Sequence[float] | None,
        neg: Sequence[float] | None,
        *,
        box: tuple[float, ...] | None = None,
        mask_input: np.ndarray | None = None,
        earlier: Iterable[Prompt] = (),
    ) -> Prompt:
        """A refinement answer's clicks as a prompt: ``pos`` labelled 1, ``neg`` labelled 0, a None click left out.

        Args:
            pos: The positive click (on a false-negative area), or None.
            neg: The negative click (on a false-positive area), or None.
            box: The box sent with the clicks.
            mask_input: The previous low-resolution logits.
            earlier: Prompts whose clicks go first, in order and with their labels (re-sending earlier clicks).
        """
        clicks = [(point, label) for past in earlier for point, label in zip(past.points, past.labels, strict=True)]
        clicks += [(point, label) for point, label in ((pos, 1), (neg, 0)) if point is not None]
        return cls(
            box=box,
            points=tuple(point for point, _ in clicks),
            labels=tuple(label for _, label in clicks),
            mask_input=mask_input,
        )


@dataclass(frozen=True)
class SegRequest:
    """A prompt on a cached image, optionally scored against a registered ground truth.

    Attributes:
        image_key: Content key of the image.
        prompt: The SAM2 prompt.
        gt_key: Content key of a registered ground truth to score the mask against (``iou``).
        return_logits: Also return the low-resolution logits.
        return_edge_iou: With ``gt_key``, also compute the edge-excluded IoU (SAM-Veteran's rewards); it costs a
            Canny edge mask per ground truth and a second IoU per mask, which SAM-R1's reward never reads.
    """

    image_key: str
    prompt: Prompt
    gt_key: str | None = None
    return_logits: bool = False
    return_edge_iou: bool = False


@dataclass
class SegResult:
    """The answer to one request: a mask and its scores, or an error with its reason.

    Attributes:
        mask: COCO RLE of the mask at the image's size (``logits > 0``).
        score: SAM2's predicted IoU of the mask.
        logits: Low-resolution logits (float16 by default), clamped to [-32, 32], when requested (the next
            refinement step's ``mask_input``).
        iou: IoU with the ground truth, when one was given.
        edge_iou: Edge-excluded IoU with the ground truth (SAM-Veteran's rewards), when one was given and the
            request asked for it (``return_edge_iou``).
        error: Why there is no mask.
        code: The error's category.
        served_by: Name of the actor that answered.
    """

    mask: dict[str, Any] | None = None
    score: float | None = None
    logits: np.ndarray | None = None
    iou: float | None = None
    edge_iou: float | None = None
    error: str | None = None
    code: ErrorCode | None = None
    served_by: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def mask_array(self) -> np.ndarray:
        """The mask as a bool ``(H, W)`` array.

        Raises:
            ValueError: When the request failed.
        """
        if self.mask is None:
            raise ValueError(f"no mask: {self.error}")
        return decode_rle(self.mask)

    @classmethod
    def failure(cls, code: ErrorCode, reason: str, served_by: str | None = None) -> SegResult:
        return cls(error=reason, code=code, served_by=served_by)


def content_key(data: ImageData | dict[str, Any]) -> str:
    """A content hash: equal images (or RLE ground truths) share a key, so they are encoded or decoded once."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(data, np.ndarray):
        array = np.ascontiguousarray(data)
        digest.update(f"array:{array.dtype.str}:{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    elif isinstance(data, bytes):
        digest.update(b"bytes:")
        digest.update(data)
    elif isinstance(data, dict):
        counts = data.get("counts")
        digest.update(f"rle:{data.get('size')}:".encode())
        digest.update(counts.encode() if isinstance(counts, str) else repr(counts).encode())
    else:
        raise TypeError(f"cannot key a {type(data).__name__}; expected an array, bytes or an RLE dict")
    return digest.hexdigest()


@dataclass(frozen=True)
class ImageRef:
    """An image with its content key, computed once so one image can be sent with many prompts."""

    key: str
    data: ImageData

    @classmethod
    def of(cls, image: ImageData | Image.Image) -> ImageRef:
        """Keeps encoded bytes as they are (decoded on the actor); arrays and PIL images become RGB arrays."""
        data = image if isinstance(image, bytes) else to_rgb(image)
        return cls(content_key(data), data)


@dataclass(frozen=True)
class GroundTruthRef:
    """A ground-truth mask as COCO RLE with its content key."""

    key: str
    rle: dict[str, Any]

    @classmethod
    def of(cls, rle: dict[str, Any]) -> GroundTruthRef:
        return cls(content_key(rle), rle)
