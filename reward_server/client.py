"""The async client of the SAM2 pool, used by reward functions, agent loops, evaluation and data preparation.

Requests for one image always go to the same actor (hash of the image's content key), so its embedding is cached
there. Each image and ground truth travels to an actor once; when an actor restarts and has lost them, it answers
``unknown_*`` and the client sends them again. Actor deaths are retried with backoff; when the pool stays
unreachable the client answers ``unavailable`` per request instead of raising, so a reward can score 0 with a reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import ray
from PIL import Image
from ray.actor import ActorHandle

from reward_server.config import ClientConfig, ServerConfig
from reward_server.images import ImageData
from reward_server.pool import connect_pool
from reward_server.protocol import RESENDABLE, ErrorCode, GroundTruthRef, ImageRef, Prompt, SegRequest, SegResult

logger = logging.getLogger(__name__)

_ACTOR_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
_SENT_KEYS_PER_ACTOR = 8192  # remembered payload keys per actor; forgetting one only costs a resend


class SamClient:
    """Sends prompts to the pool's actors.

    Args:
        actors: The pool's actor handles, in index order (see :func:`reward_server.pool.connect_pool`).
        config: Backpressure and retry settings.
    """

    def __init__(self, actors: list[ActorHandle], config: ClientConfig | None = None):
        if not actors:
            raise ValueError("a SamClient needs at least one actor")
        self.actors = actors
        self.config = config or ClientConfig()
        self._sent: list[OrderedDict[str, None]] = [OrderedDict() for _ in actors]
        self._semaphores: dict[int, asyncio.Semaphore] = {}

    @classmethod
    def connect(cls, server: ServerConfig) -> SamClient:
        """A client of the running pool named in ``server.pool``."""
        return cls(connect_pool(server.pool), server.client)

    def route(self, image_key: str) -> int:
        """The index of the actor that serves (and caches) this image."""
        return int(image_key[:12], 16) % len(self.actors)

    async def segment(
        self,
        image: ImageRef | ImageData | Image.Image,
        prompts: Sequence[Prompt],
        ground_truth: GroundTruthRef | dict[str, Any] | None = None,
        return_logits: bool = False,
        return_edge_iou: bool = False,
    ) -> list[SegResult]:
        """Masks for ``prompts`` on one image, scored against ``ground_truth`` when given.

        Args:
            image: The image (an :class:`ImageRef` avoids rehashing it per call).
            prompts: Prompts in the image's pixel coordinates.
            ground_truth: COCO RLE of the image's ground truth (or its ref), for ``iou`` and ``edge_iou``.
            return_logits: Also return low-res logits (the next refinement step's ``mask_input``).
            return_edge_iou: Also compute ``edge_iou`` against ``ground_truth`` (SAM-Veteran's rewards).

        Returns:
            One result per prompt, in order; failures are results with ``error`` and ``code``, never exceptions.
        """
        image = image if isinstance(image, ImageRef) else ImageRef.of(image)
        gt = ground_truth if isinstance(ground_truth, GroundTruthRef | None) else GroundTruthRef.of(ground_truth)
        requests = [
            SegRequest(image.key, prompt, gt.key if gt else None, return_logits, return_edge_iou) for prompt in prompts
        ]
        async with self._semaphore():
            return await self._call(self.route(image.key), requests, image, gt)

    def _semaphore(self) -> asyncio.Semaphore:
        loop_id = id(asyncio.get_running_loop())
        if loop_id not in self._semaphores:
            self._semaphores[loop_id] = asyncio.Semaphore(self.config.max_in_flight)
        return self._semaphores[loop_id]

    def _remember(self, index: int, *keys: str) -> None:
        sent = self._sent[index]
        for key in keys:
            sent[key] = None
            sent.move_to_end(key)
        while len(sent) > _SENT_KEYS_PER_ACTOR:
            sent.popitem(last=False)

    async def _call(
        self, index: int, requests: list[SegRequest], image: ImageRef, gt: GroundTruthRef | None
    ) -> list[SegResult]:
        results: list[SegResult | None] = [None] * len(requests)
        todo = list(range(len(requests)))
        resend, last_error = False, ""
        for attempt in range(self.config.max_attempts):
            sent = self._sent[index]
            images = {image.key: image.data} if resend or image.key not in sent else None
            gts = {gt.key: gt.rle} if gt is not None and (resend or gt.key not in sent) else None
            try:
                answers = await self.actors[index].segment.remote([requests[i] for i in todo], images, gts)
            except _ACTOR_ERRORS as err:
                last_error = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                logger.warning("SAM2 actor %d failed (attempt %d): %s", index, attempt + 1, last_error)
                sent.clear()
                resend = True
                await asyncio.sleep(self.config.retry_backoff_s * 2**attempt)
                continue
            self._remember(index, image.key, *([gt.key] if gt is not None else []))
            retry = []
            for i, answer in zip(todo, answers, strict=True):
                if answer.code in RESENDABLE:
                    retry.append(i)
                else:
                    results[i] = answer
            if not retry:
                return results
            todo, resend = retry, True
            last_error = answers[0].error if answers else last_error
        reason = f"SAM2 pool unavailable after {self.config.max_attempts} attempts: {last_error}"
        for i in todo:
            results[i] = SegResult.failure(ErrorCode.UNAVAILABLE, reason)
        return results
