"""SAM2 for the evaluator: the reward server's engine in process, batched across the samples of a step.

:func:`recipe.task.episodes.run_episodes` asks for one mask per episode, concurrently. Calls made in the same
event-loop turn are answered by one :meth:`SamEngine.segment` call (the reward server's
:class:`~reward_server.batching.MicroBatcher` with no window and no cap), so each image is encoded once and the
prompts of the whole batch go through the mask decoder together.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from reward_server.batching import Batch, MicroBatcher
from reward_server.engine import SamEngine
from reward_server.protocol import ImageRef, Prompt, SegRequest, SegResult


class BatchedSegmenter:
    """The SAM2 client's ``segment`` signature over an in-process engine.

    The engine runs on the event loop's thread: the workflow's episodes advance in lockstep, so nothing else waits on
    the loop while SAM2 works.

    Args:
        engine: Any object with :meth:`SamEngine.segment`'s signature (the engine, or a fake in tests).

    Attributes:
        seconds: Time spent in the engine so far (the SAM2 share of the evaluation).
        calls: Engine calls so far (batches).
    """

    def __init__(self, engine: SamEngine):
        self.engine = engine
        self.seconds = 0.0
        self.calls = 0
        self._batcher = MicroBatcher(self._run)

    async def segment(
        self,
        image: ImageRef,
        prompts: Sequence[Prompt],
        ground_truth: Any = None,
        return_logits: bool = False,
        return_edge_iou: bool = False,
    ) -> list[SegResult]:
        """Masks for ``prompts`` on ``image``, computed with every other call of this event-loop turn.

        ``ground_truth`` must be None: the evaluator scores masks itself (with ignore pixels, docs/conventions.md,
        "Evaluation metrics"), so ``return_edge_iou`` is carried to the engine as the client carries it but yields no
        ``edge_iou``.
        """
        if ground_truth is not None:
            raise ValueError("the evaluator's segmenter does not score; pass ground_truth=None")
        image = image if isinstance(image, ImageRef) else ImageRef.of(image)
        requests = [SegRequest(image.key, p, None, return_logits, return_edge_iou) for p in prompts]
        return await self._batcher.segment(requests, {image.key: image.data})

    async def _run(self, batch: Batch) -> list[SegResult]:
        started = time.perf_counter()
        try:
            return self.engine.segment(batch.requests, batch.images)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1
