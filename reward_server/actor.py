"""An async Ray actor serving one SAM2 engine: micro-batching, one device thread, metrics, health.

Calls from many clients queue on the actor's event loop in a :class:`~reward_server.batching.MicroBatcher`: it waits
``batch_window_ms`` after the first one, merges what arrived (up to ``max_batch_prompts``) and the actor runs the
engine on a single device thread, so concurrent requests for one image share one encode and the event loop stays
free to answer ``health()``.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import ray
from ray.util import metrics

from reward_server.batching import Batch, MicroBatcher
from reward_server.config import ActorConfig, EngineConfig
from reward_server.engine import EngineStats
from reward_server.images import ImageData
from reward_server.protocol import ErrorCode, SegRequest, SegResult
from reward_server.segmenters import build_engine

_LATENCY_BOUNDARIES = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
_BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


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
        self.engine = build_engine(engine_config)
        self._device_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam2-device")
        self._metrics = _Metrics(name)
        self._batcher = MicroBatcher(self._run_batch, actor_config.batch_window_ms, actor_config.max_batch_prompts)
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
        results = await self._batcher.segment(requests, images, ground_truths)
        for result in results:
            result.served_by = self.name
        return results

    async def health(self) -> dict[str, Any]:
        """Answers at once, also while the device is busy: queue, cache, counters and where the actor runs."""
        context = ray.get_runtime_context()
        return {
            "name": self.name,
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
            "uptime_s": time.time() - self._started,
            "queued_calls": self._batcher.queued_calls,
            "busy_s": 0.0 if self._busy_since is None else time.perf_counter() - self._busy_since,
            "served_s": self._served_s,
            **self.engine.info(),
            **{key: value for key, value in asdict(self.engine.stats).items() if key != "errors"},
            "errors": {str(code): count for code, count in self.engine.stats.errors.items()},
        }

    async def _run_batch(self, batch: Batch) -> list[SegResult]:
        """Runs one batch on the device thread, feeding the metrics and the health counters."""
        started = time.perf_counter()
        for enqueued in batch.enqueued:
            self._metrics.queue_latency.observe(started - enqueued)
        self._metrics.batch_size.observe(len(batch.requests))
        before = EngineStats(**{**asdict(self.engine.stats), "errors": self.engine.stats.errors.copy()})
        self._busy_since = started
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._device_thread, self.engine.segment, batch.requests, batch.images, batch.ground_truths
            )
        except Exception:
            # The batcher answers every request with an internal error; the engine, which raised, did not count them.
            self.engine.stats.errors[ErrorCode.INTERNAL] += len(batch.requests)
            raise
        finally:
            self._busy_since = None
            served = time.perf_counter() - started
            self._served_s += served
            self._metrics.service_latency.observe(served)
            self._metrics.record(before, self.engine.stats, self.engine.info())
