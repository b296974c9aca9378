"""SAM2 for the evaluator: the reward server's engine in process, batched across the samples of a step.

:func:`recipe.veteran.workflow.run_episodes` asks for one mask per episode, concurrently. Calls made in the same
event-loop turn are answered by one :meth:`SamEngine.segment` call, so each image is encoded once and the prompts of
the whole batch go through the mask decoder together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reward_server.engine import SamEngine
from reward_server.protocol import ErrorCode, ImageRef, Prompt, SegRequest, SegResult

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    requests: list[SegRequest]
    image: ImageRef
    future: asyncio.Future


class BatchedSegmenter:
    """The SAM2 client's ``segment`` signature over an in-process engine.

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
        self._pending: list[_Pending] = []

    async def segment(
        self,
        image: ImageRef,
        prompts: Sequence[Prompt],
        ground_truth: Any = None,
        return_logits: bool = False,
        return_edge_iou: bool = False,
    ) -> list[SegResult]:
        """Masks for ``prompts`` on ``image``, computed with every other call of this event-loop turn.

        ``ground_truth`` must be None: the evaluator scores masks itself (with ignore pixels, SPEC section 6), so
        ``return_edge_iou`` is carried to the engine as the client carries it but yields no ``edge_iou``.
        """
        if ground_truth is not None:
            raise ValueError("the evaluator's segmenter does not score; pass ground_truth=None")
        image = image if isinstance(image, ImageRef) else ImageRef.of(image)
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._flush)
        pending = _Pending(
            [SegRequest(image.key, p, None, return_logits, return_edge_iou) for p in prompts],
            image,
            loop.create_future(),
        )
        self._pending.append(pending)
        return await pending.future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        requests = [request for call in batch for request in call.requests]
        images = {call.image.key: call.image.data for call in batch}
        started = time.perf_counter()
        try:
            results = self.engine.segment(requests, images)
        except Exception as err:  # one failing batch must not take the run down: its samples score as failed
            logger.exception("SAM2 engine failed on a batch of %d prompts", len(requests))
            results = [SegResult.failure(ErrorCode.INTERNAL, f"engine failed: {err!r:.300}") for _ in requests]
        self.seconds += time.perf_counter() - started
        self.calls += 1
        offset = 0
        for call in batch:
            call.future.set_result(results[offset : offset + len(call.requests)])
            offset += len(call.requests)
