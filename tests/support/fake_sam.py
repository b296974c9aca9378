"""Fake SAM2s: one behind the pool client's ``segment`` and one behind the engine's, plus an engine-to-client adapter.

- :class:`FakeSam` answers ``SamClient.segment`` calls (rewards, agent loops, the workflow) with scripted masks.
- :class:`GoodEveryNth` answers ``SamEngine.segment`` batches (data_prep's mask comprehension): the GT or nothing.
- :class:`EngineClient` puts any engine (the real one, or a fake) behind the client's signature, in process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from reward_server.masks import MODEL_SIZE, decode_rle, edge_excluded_iou, encode_rle, mask_iou
from reward_server.protocol import GroundTruthRef, ImageRef, Prompt, SegRequest, SegResult

T = TypeVar("T")
PerCall = T | Callable[[int], T]


def _at(value: PerCall[T], n: int) -> T:
    return value(n) if callable(value) else value


class FakeSam:
    """A fake SAM2 pool client: records every prompt in ``prompts``, each call's ``return_edge_iou`` in
    ``edge_iou_asked``, and answers each call with one result.

    The mask, IoU and edge IoU are constants or functions of ``n``, the number of prompts received so far (this
    call's included), so a mask can change from call to call. Logits, when asked for, are filled with ``n``: a test
    can tell which call's logits came back as a refinement's ``mask_input``.

    Args:
        mask: The boolean mask (default: empty, 840x840).
        truth: When given, ``iou`` is the mask's IoU with it.
        iou: The result's ``iou`` when no ``truth`` is given.
        edge_iou: The result's ``edge_iou``, whether or not the call asks for it (``return_edge_iou``).
        score: SAM2's predicted score.
        failure: A failed result returned instead of any mask.
    """

    def __init__(
        self,
        mask: PerCall[np.ndarray] | None = None,
        *,
        truth: np.ndarray | None = None,
        iou: PerCall[float | None] = None,
        edge_iou: PerCall[float | None] = None,
        score: float = 1.0,
        failure: SegResult | None = None,
    ):
        self.mask = np.zeros((MODEL_SIZE, MODEL_SIZE), bool) if mask is None else mask
        self.truth, self.iou, self.edge_iou, self.score, self.failure = truth, iou, edge_iou, score, failure
        self.prompts: list[Prompt] = []
        self.edge_iou_asked: list[bool] = []

    async def segment(
        self,
        image: Any,
        prompts: Sequence[Prompt],
        ground_truth: Any = None,
        return_logits: bool = False,
        return_edge_iou: bool = False,
    ) -> list[SegResult]:
        self.prompts += list(prompts)
        self.edge_iou_asked.append(return_edge_iou)
        if self.failure is not None:
            return [self.failure]
        n = len(self.prompts)
        mask = _at(self.mask, n)
        iou = mask_iou(mask, self.truth) if self.truth is not None else _at(self.iou, n)
        logits = np.full((256, 256), n, np.float16) if return_logits else None
        return [
            SegResult(mask=encode_rle(mask), score=self.score, logits=logits, iou=iou, edge_iou=_at(self.edge_iou, n))
        ]


class GoodEveryNth:
    """A fake SAM2 engine for data_prep: the GT itself for every ``every``-th request (Good Enough), else nothing;
    logits, when asked for, are +1 (a mask) or -1 (nothing) everywhere."""

    def __init__(self, every: int):
        self.every, self.calls = every, 0

    def segment(
        self, requests: Sequence[SegRequest], images: dict | None = None, ground_truths: dict | None = None
    ) -> list[SegResult]:
        results = []
        for request in requests:
            gt = decode_rle(ground_truths[request.gt_key])
            mask = gt if self.calls % self.every == 0 else np.zeros_like(gt)
            self.calls += 1
            # Logits that say "inside" (+1) or "outside" (-1) everywhere, when asked for, as the engine's float16.
            logits = np.full((256, 256), 1.0 if mask.any() else -1.0, np.float16) if request.return_logits else None
            results.append(
                SegResult(mask=encode_rle(mask), score=1.0, logits=logits, edge_iou=edge_excluded_iou(mask, gt))
            )
        return results


class EngineClient:
    """An engine (``SamEngine.segment``'s signature) behind the pool client's, in process: one engine call per call.

    Images and ground truths are keyed as the real client keys them, so what the engine sees matches a pool's.
    """

    def __init__(self, engine: Any):
        self.engine = engine

    async def segment(
        self,
        image: Any,
        prompts: Sequence[Prompt],
        ground_truth: GroundTruthRef | dict | None = None,
        return_logits: bool = False,
        return_edge_iou: bool = False,
    ) -> list[SegResult]:
        image = image if isinstance(image, ImageRef) else ImageRef.of(image)
        gt = ground_truth if isinstance(ground_truth, GroundTruthRef | None) else GroundTruthRef.of(ground_truth)
        requests = [
            SegRequest(image.key, prompt, gt.key if gt else None, return_logits, return_edge_iou) for prompt in prompts
        ]
        return self.engine.segment(requests, {image.key: image.data}, {gt.key: gt.rle} if gt else None)
