"""The one way to call SAM2 from a process: concurrent ``segment`` calls merged into batches, answered per caller.

A :class:`MicroBatcher` queues the calls made on its event loop, merges whole calls into one
:class:`Batch` (after ``window_ms``, or within this event-loop turn when the window is 0, up to ``max_prompts``
prompts), hands it to its ``run`` coroutine and gives each caller exactly its slice of the results. The reward
actor wraps it with its device thread, metrics and health (:mod:`reward_server.actor`), the evaluator with its time
accounting (:mod:`recipe.evaluate.segmenter`). Pure asyncio: no Ray, no thread of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from reward_server.images import ImageData
from reward_server.protocol import ErrorCode, SegRequest, SegResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """Calls merged for one engine call: :meth:`SamEngine.segment`'s arguments plus when each call arrived.

    Attributes:
        requests: Every call's requests, calls in arrival order.
        images: Image payloads of all calls, by content key.
        ground_truths: Ground-truth payloads of all calls, by content key.
        enqueued: ``time.perf_counter()`` at which each merged call arrived, in the same order.
    """

    requests: list[SegRequest]
    images: dict[str, ImageData]
    ground_truths: dict[str, dict[str, Any]]
    enqueued: list[float]


@dataclass
class _Call:
    requests: list[SegRequest]
    images: dict[str, ImageData]
    ground_truths: dict[str, dict[str, Any]]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Merges concurrent ``segment`` calls into batches run one at a time.

    The first call into an idle batcher starts a batch: after ``window_ms`` (0: once the event loop has run what
    was ready when the call came, i.e. every call made in this turn) the queued calls are taken from the head, whole,
    up to ``max_prompts`` prompts (at least one call, however large), and run. Calls that arrive meanwhile, or that
    did not fit, start the next batch the same way when this one is answered.

    Args:
        run: Answers a batch, one result per request in order (e.g. :meth:`SamEngine.segment` on a device thread).
            An exception, or a wrong number of results, answers every request of the batch with an ``internal``
            error; the batcher keeps serving.
        window_ms: How long the first call of a batch waits for others to join it; 0 for this event-loop turn.
        max_prompts: Most prompts per batch; None for no limit.
    """

    def __init__(
        self,
        run: Callable[[Batch], Awaitable[list[SegResult]]],
        window_ms: float = 0.0,
        max_prompts: int | None = None,
    ):
        self._run = run
        self._window_s = window_ms / 1000
        self._max_prompts = max_prompts
        self._queue: deque[_Call] = deque()
        self._drainer: asyncio.Task | None = None

    @property
    def queued_calls(self) -> int:
        """Calls waiting for a batch (not those of the batch being run)."""
        return len(self._queue)

    async def segment(
        self,
        requests: list[SegRequest],
        images: dict[str, ImageData] | None = None,
        ground_truths: dict[str, dict[str, Any]] | None = None,
    ) -> list[SegResult]:
        """Answers ``requests`` in order, in a batch with the calls made around it.

        Args:
            requests: Prompts on images identified by content key.
            images: Image payloads for keys the engine may not hold.
            ground_truths: COCO RLE ground truths by key, for scoring.
        """
        call = _Call(requests, images or {}, ground_truths or {}, asyncio.get_running_loop().create_future())
        self._queue.append(call)
        if self._drainer is None:
            # A task's first step is scheduled like loop.call_soon: it runs after everything already ready this turn.
            self._drainer = asyncio.create_task(self._drain())
        return await call.future

    async def _drain(self) -> None:
        """Runs batches until the queue is empty; cancelled (its loop closing), it cancels every caller it holds."""
        calls: list[_Call] = []
        try:
            while self._queue:
                if self._window_s:
                    await asyncio.sleep(self._window_s)
                calls = self._take()
                results = await self._answer(calls)
                offset = 0
                for call in calls:
                    answer = results[offset : offset + len(call.requests)]
                    offset += len(call.requests)
                    if not call.future.done():  # a caller cancelled meanwhile no longer wants its answer
                        call.future.set_result(answer)
                calls = []
        except asyncio.CancelledError:
            for call in [*calls, *self._queue]:
                call.future.cancel()
            self._queue.clear()
            raise
        finally:
            self._drainer = None

    def _take(self) -> list[_Call]:
        """Whole calls from the queue head, up to ``max_prompts`` prompts (always at least one call)."""
        calls = [self._queue.popleft()]
        prompts = len(calls[0].requests)
        while self._queue and (
            self._max_prompts is None or prompts + len(self._queue[0].requests) <= self._max_prompts
        ):
            calls.append(self._queue.popleft())
            prompts += len(calls[-1].requests)
        return calls

    async def _answer(self, calls: list[_Call]) -> list[SegResult]:
        """The batch's results from ``run``, or an ``internal`` error per request when it fails."""
        batch = Batch(
            requests=[request for call in calls for request in call.requests],
            images={key: image for call in calls for key, image in call.images.items()},
            ground_truths={key: gt for call in calls for key, gt in call.ground_truths.items()},
            enqueued=[call.enqueued for call in calls],
        )
        try:
            results = await self._run(batch)
            if len(results) != len(batch.requests):
                raise RuntimeError(f"{len(results)} results for {len(batch.requests)} requests")
        except Exception as err:  # one failing batch answers its own callers; the batcher keeps serving
            logger.exception("SAM2 engine failed on a batch of %d prompts", len(batch.requests))
            return [SegResult.failure(ErrorCode.INTERNAL, f"engine failed: {err!r:.300}") for _ in batch.requests]
        return results
