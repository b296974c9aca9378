"""An async Ray actor serving one SAM2 engine: micro-batching, one device thread, metrics, health.

Calls from many clients queue on the actor's event loop; a batcher waits ``batch_window_ms`` after the first one,
merges what arrived (up to ``max_batch_prompts``) and runs the engine on a single device thread, so concurrent
requests for one image share one encode and the event loop stays free to answer ``health()``.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from ray.util import metrics

from reward_server.config import ActorConfig, EngineConfig
from reward_server.engine import EngineStats, SamEngine
from reward_server.images import ImageData
from reward_server.protocol import ErrorCode, SegRequest, SegResult

_LATENCY_BOUNDARIES = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
_BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


@dataclass
class _Call:
    requests: list[SegRequest]
    images: dict[str, ImageData]
    ground_truths: dict[str, dict[str, Any]]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class _Metrics:
    """The actor's Ray metrics (exported to the dashboard's Prometheus endpoint), fed from engine-stat deltas."""

    def __init__(self, actor: str):
        tags = ("actor",)
        self._tags = {"actor": actor}
        self.requests = metrics.Counter("samrl_sam_requests", "Prompts received", tags)
        self.errors = metrics.Counter("samrl_sam_errors", "Prompts answered with an error", ("actor", "code"))
        self.encodes = metrics.Counter("samrl_sam_encodes", "Images encoded", tags)
        self.cache_hits = metrics.Counter("samrl_sam_cache_hits", "Image lookups served from the cache", tags)
        self.cache_misses = metrics.Counter("samrl_sam_cache_misses", "Image lookups that needed an encode", tags)
        self.batch_size = metrics.Histogram(
            "samrl_sam_batch_prompts", "Prompts per engine batch", _BATCH_BOUNDARIES, tags
        )
        self.queue_latency = metrics.Histogram(
            "samrl_sam_queue_latency_s", "Seconds a call waited before its batch ran", _LATENCY_BOUNDARIES, tags
        )
        self.service_latency = metrics.Histogram(
            "samrl_sam_service_latency_s", "Seconds an engine batch took", _LATENCY_BOUNDARIES, tags
        )
        self.cache_bytes = metrics.Gauge("samrl_sam_cache_bytes", "Bytes of cached image embeddings", tags)
        self.cached_images = metrics.Gauge("samrl_sam_cached_images", "Images in the embedding cache", tags)
        for metric in (
            self.requests,
            self.encodes,
            self.cache_hits,
            self.cache_misses,
            self.batch_size,
            self.queue_latency,
            self.service_latency,
            self.cache_bytes,
            self.cached_images,
        ):
            metric.set_default_tags(self._tags)

    def record(self, before: EngineStats, after: EngineStats, info: dict[str, Any]) -> None:
        for name in ("requests", "encodes", "cache_hits", "cache_misses"):
            delta = getattr(after, name) - getattr(before, name)
            if delta:
                getattr(self, name).inc(delta)
        for code, count in (after.errors - before.errors).items():
            self.errors.inc(count, tags={**self._tags, "code": str(code)})
        self.cache_bytes.set(info["cache_bytes"])
        self.cached_images.set(info["cached_images"])


class SamActor:
    """One SAM2 engine behind an async Ray actor (decorate with ``ray.remote`` options in the pool).

    Args:
        engine_config: Model and cache settings.
        actor_config: Micro-batching settings.
        name: The actor's name, reported in results and metrics.
    """

    def __init__(self, engine_config: EngineConfig, actor_config: ActorConfig, name: str):
        self.name = name
        self.config = actor_config
        self.engine = SamEngine(engine_config)
        self._device_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam2-device")
        self._metrics = _Metrics(name)
        self._queue: list[_Call] = []
        self._wakeup: asyncio.Event | None = None
        self._batcher: asyncio.Task | None = None
        self._busy_since: float | None = None
        self._served_s = 0.0  # seconds the device spent on batches since this actor (re)started
        self._started = time.time()

    async def segment(
        self,
        requests: list[SegRequest],
        images: dict[str, ImageData] | None = None,
        ground_truths: dict[str, dict[str, Any]] | None = None,
    ) -> list[SegResult]:
        """Answers ``requests`` in order; ``images`` and ``ground_truths`` carry payloads the actor may lack."""
        if self._batcher is None:
            self._wakeup = asyncio.Event()
            self._batcher = asyncio.create_task(self._batch_loop())
        call = _Call(requests, images or {}, ground_truths or {}, asyncio.get_running_loop().create_future())
        self._queue.append(call)
        self._wakeup.set()
        return await call.future

    async def health(self) -> dict[str, Any]:
        """Answers at once, also while the device is busy: queue, cache, counters and where the actor runs."""
        context = ray.get_runtime_context()
        return {
            "name": self.name,
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
            "uptime_s": time.time() - self._started,
            "queued_calls": len(self._queue),
            "busy_s": 0.0 if self._busy_since is None else time.perf_counter() - self._busy_since,
            "served_s": self._served_s,
            **self.engine.info(),
            **{key: value for key, value in asdict(self.engine.stats).items() if key != "errors"},
            "errors": {str(code): count for code, count in self.engine.stats.errors.items()},
        }

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(self.config.batch_window_ms / 1000)
            calls = self._take_batch()
            if not self._queue:
                self._wakeup.clear()
            requests = [request for call in calls for request in call.requests]
            images = {key: image for call in calls for key, image in call.images.items()}
            ground_truths = {key: gt for call in calls for key, gt in call.ground_truths.items()}
            started = time.perf_counter()
            for call in calls:
                self._metrics.queue_latency.observe(started - call.enqueued)
            self._metrics.batch_size.observe(len(requests))
            before = EngineStats(**{**asdict(self.engine.stats), "errors": self.engine.stats.errors.copy()})
            self._busy_since = started
            try:
                results = await loop.run_in_executor(
                    self._device_thread, self.engine.segment, requests, images, ground_truths
                )
            except Exception as err:  # a bug in one batch answers that batch; the actor keeps serving
                reason = f"engine failed: {err!r:.300}"
                results = [SegResult.failure(ErrorCode.INTERNAL, reason) for _ in requests]
                self.engine.stats.errors[ErrorCode.INTERNAL] += len(requests)
            finally:
                self._busy_since = None
            served = time.perf_counter() - started
            self._served_s += served
            self._metrics.service_latency.observe(served)
            self._metrics.record(before, self.engine.stats, self.engine.info())
            offset = 0
            for call in calls:
                answer = results[offset : offset + len(call.requests)]
                offset += len(call.requests)
                for result in answer:
                    result.served_by = self.name
                if not call.future.done():
                    call.future.set_result(answer)

    def _take_batch(self) -> list[_Call]:
        """Whole calls from the queue head, up to ``max_batch_prompts`` prompts (always at least one call)."""
        taken, prompts = 0, 0
        while taken < len(self._queue):
            size = len(self._queue[taken].requests)
            if taken and prompts + size > self.config.max_batch_prompts:
                break
            taken, prompts = taken + 1, prompts + size
        calls, self._queue = self._queue[:taken], self._queue[taken:]
        return calls
