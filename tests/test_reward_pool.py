"""The SAM2 actor pool on a local Ray: micro-batching, health, bad input, restarts, reach by name."""

import asyncio
import os
import re
import socket
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from bench.sam2_parity import random_image
from reward_server import pool as pool_module
from reward_server.client import SamClient
from reward_server.config import PoolConfig, ServerConfig, server_config, store_schemas
from reward_server.engine import SamEngine, ray_gpu_ids, resolve_device
from reward_server.masks import encode_rle, mask_iou
from reward_server.pool import actor_name, connect_pool, pool_health, shutdown_pool, start_pool
from reward_server.protocol import ErrorCode, ImageRef, Prompt, SegRequest, SegResult

pytestmark = pytest.mark.slow

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def compose_server(preset: str, *overrides: str) -> ServerConfig:
    store_schemas()  # the presets compose over ServerConfig
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("reward_server_app", overrides=[f"reward_server={preset}", *overrides])
    return server_config(cfg.reward_server)


def run(coroutine):
    return asyncio.run(coroutine)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def local_ray():
    port = free_port()
    # Two logical GPUs, so Ray's GPU assignment can be observed on a machine without one.
    ray.init(
        num_cpus=6,
        num_gpus=2,
        include_dashboard=False,
        log_to_driver=False,
        namespace="samrl",
        _metrics_export_port=port,
    )
    yield port
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(local_ray):
    config = compose_server("tiny_cpu", "reward_server.pool.name=test_pool", "reward_server.actor.batch_window_ms=20")
    actors = start_pool(config)
    yield config, actors
    shutdown_pool(config.pool)


def test_presets_compose_into_the_config_schema():
    large = compose_server("large")
    assert large.engine.model == "sam2.1_hiera_l" and large.engine.checkpoint is None
    assert not large.engine.allow_random_weights and large.pool.gpus_per_actor == 1
    tiny = compose_server("tiny_cpu", "reward_server.pool.num_actors=3")
    assert tiny.engine.model == "sam2.1_hiera_t" and tiny.engine.allow_random_weights
    assert tiny.pool.gpus_per_actor == 0 and tiny.pool.num_actors == 3
    assert tiny.client == large.client  # inherited from the large preset
    with pytest.raises(Exception, match="typo"):
        compose_server("tiny_cpu", "+reward_server.engine.typo=1")


def test_concurrent_requests_for_one_image_encode_once(pool):
    config, actors = pool
    client = SamClient(actors, config.client)
    image = random_image(0)
    before = pool_health(actors)

    async def rollouts():
        return await asyncio.gather(
            *(client.segment(image, [Prompt(box=(100 + 10 * i, 100, 500, 600))]) for i in range(8))
        )

    results = [result for batch in run(rollouts()) for result in batch]
    assert all(result.ok for result in results)
    routed = actor_name(config.pool, client.route(ImageRef.of(image).key))
    assert {result.served_by for result in results} == {routed}
    after = pool_health(actors)
    encodes = sum(h["encodes"] for h in after) - sum(h["encodes"] for h in before)
    hits = sum(h["cache_hits"] for h in after) - sum(h["cache_hits"] for h in before)
    assert (encodes, hits) == (1, 7)


def test_results_are_small_and_scored(pool):
    config, actors = pool
    client = SamClient(actors, config.client)
    gt = np.zeros((840, 840), bool)
    gt[100:600, 200:500] = True
    image, prompt = random_image(1), Prompt(box=(200, 100, 500, 600))
    (result,) = run(client.segment(image, [prompt], encode_rle(gt), True, return_edge_iou=True))
    assert result.ok and 0.0 <= result.iou <= 1.0 and 0.0 <= result.edge_iou <= 1.0
    (plain,) = run(client.segment(image, [prompt], encode_rle(gt), True))
    assert plain.iou == result.iou and plain.edge_iou is None  # the edge-excluded IoU only when asked
    assert isinstance(result.mask["counts"], str)
    assert result.logits.dtype == np.float16 and result.logits.shape == (128, 128)


def test_health_answers_while_the_device_is_busy(pool):
    config, actors = pool
    client = SamClient(actors, config.client)
    images = [random_image(100 + i) for i in range(6)]
    target = [i for i, image in enumerate(images) if client.route(ImageRef.of(image).key) == 0]

    async def busy_then_health():
        work = asyncio.gather(*(client.segment(images[i], [Prompt(box=(10, 10, 400, 400))]) for i in target))
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        health = await actors[0].health.remote()
        elapsed = time.perf_counter() - started
        await work
        return health, elapsed

    health, elapsed = run(busy_then_health())
    assert health["busy_s"] > 0 or health["queued_calls"] > 0
    assert elapsed < 1.0


def test_bad_input_is_answered_and_the_actor_keeps_serving(pool):
    config, actors = pool
    client = SamClient(actors, config.client)
    image = random_image(2)
    prompts = [
        Prompt(box=(float("nan"), 0, 10, 10)),
        Prompt(box=(300, 300, 100, 100)),
        Prompt(points=((2000, 5),), labels=(1,)),
        Prompt(box=(0, 0, 100, 100), mask_input=np.zeros((3, 3), np.float32)),
        Prompt(box=(10, 10, 300, 300)),
    ]
    results = run(client.segment(image, prompts))
    assert [result.code for result in results[:4]] == [ErrorCode.BAD_PROMPT] * 4
    assert results[4].ok
    (broken,) = run(client.segment(b"not an image", [Prompt(box=(0, 0, 5, 5))]))
    assert broken.code == ErrorCode.BAD_IMAGE and "undecodable" in broken.error
    (bad_gt,) = run(client.segment(image, [Prompt(box=(0, 0, 50, 50))], {"size": [840, 840], "counts": "x"}))
    assert bad_gt.code == ErrorCode.BAD_GT
    assert all(result.ok for result in run(client.segment(image, [Prompt(box=(20, 20, 200, 200))])))
    errors = {code: sum(h["errors"].get(code, 0) for h in pool_health(actors)) for code in ("bad_prompt", "bad_image")}
    assert errors["bad_prompt"] >= 4 and errors["bad_image"] >= 1


def test_pool_is_reached_by_name_from_another_process(pool):
    config, _ = pool

    @ray.remote(num_cpus=0)
    def segment_elsewhere(config: ServerConfig, image: np.ndarray) -> tuple[bool, int]:
        client = SamClient.connect(config)
        results = asyncio.run(client.segment(image, [Prompt(box=(10, 10, 300, 300))]))
        return results[0].ok, len(client.actors)

    assert ray.get(segment_elsewhere.remote(config, random_image(3))) == (True, config.pool.num_actors)


def test_killed_actor_loses_no_request(local_ray):
    config = compose_server("tiny_cpu", "reward_server.pool.name=kill_pool", "reward_server.actor.max_batch_prompts=2")
    actors = start_pool(config)
    try:
        client = SamClient(actors, config.client)
        images = [random_image(200 + i) for i in range(6)]
        prompts = [Prompt(box=(50, 60, 500, 700)), Prompt(box=(100, 100, 300, 300), points=((200, 200),), labels=(1,))]
        pid_before = pool_health(actors)[0]["pid"]

        async def requests_with_a_crash():
            work = asyncio.gather(*(client.segment(image, prompts, return_logits=True) for image in images))
            await asyncio.sleep(1.0)  # mid-stream: some batches done, others queued or running
            ray.kill(actors[0], no_restart=False)
            return await work

        answers = run(requests_with_a_crash())
        assert pool_health(actors)[0]["pid"] != pid_before  # it really restarted
        reference = SamEngine(config.engine)
        for image, results in zip(images, answers, strict=True):
            assert [result.ok for result in results] == [True, True], [r.error for r in results]
            ref = ImageRef.of(image)
            expected = reference.segment(
                [SegRequest(ref.key, p, return_logits=True) for p in prompts], {ref.key: ref.data}
            )
            for result, local in zip(results, expected, strict=True):
                # Same weights; only float reduction order differs (the actor runs one OpenMP thread).
                assert np.abs(result.logits.astype(np.float32) - local.logits.astype(np.float32)).max() < 2e-2
                assert mask_iou(result.mask_array(), local.mask_array()) > 0.995
    finally:
        shutdown_pool(config.pool)


def test_client_answers_unavailable_when_the_pool_is_gone(local_ray):
    config = compose_server(
        "tiny_cpu",
        "reward_server.pool.name=gone_pool",
        "reward_server.client.max_attempts=2",
        "reward_server.client.retry_backoff_s=0.05",
    )
    actors = start_pool(config)
    client = SamClient(actors, config.client)
    shutdown_pool(config.pool)
    (result,) = run(client.segment(random_image(4), [Prompt(box=(0, 0, 10, 10))]))
    assert result.code == ErrorCode.UNAVAILABLE and "after 2 attempts" in result.error
    with pytest.raises(RuntimeError, match="no SAM2 pool"):
        connect_pool(config.pool)


def test_metrics_reach_rays_prometheus_export(pool, local_ray):
    """What the dashboard's Metrics page plots: Ray exports application metrics as ray_<name>[_total]."""
    config, actors = pool
    run(SamClient(actors, config.client).segment(random_image(5), [Prompt(box=(0, 0, 100, 100))]))
    pattern = re.compile(r'^ray_samrl_sam_encodes_total\{[^}]*actor="test_pool-\d"[^}]*\} ([0-9.e+]+)$', re.M)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = urllib.request.urlopen(f"http://127.0.0.1:{local_ray}/metrics", timeout=5).read().decode()
        values = [float(value) for value in pattern.findall(body)]
        if values and sum(values) >= 1:
            break
        time.sleep(2)
    else:
        pytest.fail("ray_samrl_sam_encodes_total never appeared on the metrics export port")
    for name in ("requests_total", "cache_hits_total", "batch_prompts_bucket", "service_latency_s_bucket"):
        assert f"ray_samrl_sam_{name}" in body


@pytest.mark.parametrize("preset", ["large", "tiny_cpu"])
def test_load_preset_matches_hydra_composition(preset):
    from reward_server.config import load_preset

    assert load_preset(preset) == compose_server(preset)
    overridden = load_preset(preset, {"engine.checkpoint": "/ckpt.pt", "pool.num_actors": 4})
    assert overridden == compose_server(
        preset, "reward_server.engine.checkpoint=/ckpt.pt", "reward_server.pool.num_actors=4"
    )


def test_client_bounds_its_calls_in_flight():
    """Backpressure: with max_in_flight=2, a burst of calls never has more than 2 outstanding at an actor."""
    from reward_server.config import ClientConfig

    class SlowActor:
        def __init__(self):
            self.outstanding = self.peak = 0
            self.segment = self  # the client calls actor.segment.remote(...)

        def remote(self, requests, images=None, ground_truths=None):
            return self._answer(requests)

        async def _answer(self, requests):
            self.outstanding += 1
            self.peak = max(self.peak, self.outstanding)
            await asyncio.sleep(0.05)
            self.outstanding -= 1
            return [SegResult(mask=encode_rle(np.zeros((4, 4), bool)), score=1.0) for _ in requests]

    actor = SlowActor()
    client = SamClient([actor], ClientConfig(max_in_flight=2))
    images = [np.full((4, 4, 3), i, np.uint8) for i in range(7)]

    async def burst():
        return await asyncio.gather(*(client.segment(image, [Prompt(box=(0, 0, 2, 2))]) for image in images))

    results = run(burst())
    assert all(r[0].ok for r in results) and actor.peak == 2


def test_client_carries_the_edge_iou_flag_to_the_actor():
    class RecordingActor:
        def __init__(self):
            self.requests = []
            self.segment = self  # the client calls actor.segment.remote(...)

        def remote(self, requests, images=None, ground_truths=None):
            self.requests += requests
            return self._answer(len(requests))

        async def _answer(self, count):
            return [SegResult(mask=encode_rle(np.zeros((4, 4), bool)), score=1.0) for _ in range(count)]

    actor = RecordingActor()
    client = SamClient([actor])
    image, gt = np.zeros((4, 4, 3), np.uint8), encode_rle(np.ones((4, 4), bool))
    run(client.segment(image, [Prompt(box=(0, 0, 2, 2))], ground_truth=gt))
    run(client.segment(image, [Prompt(box=(0, 0, 2, 2))] * 2, ground_truth=gt, return_edge_iou=True))
    assert [request.return_edge_iou for request in actor.requests] == [False, True, True]


def test_several_actors_spread_over_nodes_unless_told_otherwise():
    assert PoolConfig().placement_strategy == "PACK"
    assert PoolConfig(num_actors=2).placement_strategy == "SPREAD"
    assert PoolConfig(num_actors=2, strategy="STRICT_SPREAD").placement_strategy == "STRICT_SPREAD"
    assert compose_server("large", "reward_server.pool.num_actors=2").pool.placement_strategy == "SPREAD"


def test_the_placement_group_gets_the_pools_strategy(monkeypatch):
    created = {}

    def fake_placement_group(bundles, strategy, name, lifetime):
        created.update(bundles=bundles, strategy=strategy)
        return types.SimpleNamespace(ready=lambda: "ready")

    def no_group(name):
        raise ValueError(name)

    monkeypatch.setattr(pool_module, "get_placement_group", no_group)
    monkeypatch.setattr(pool_module, "placement_group", fake_placement_group)
    monkeypatch.setattr(pool_module.ray, "wait", lambda refs, timeout: (refs, []))
    pool_module._placement_group(PoolConfig(num_actors=2), timeout_s=1.0)
    assert created == {"bundles": [{"CPU": 2.0, "GPU": 1.0}] * 2, "strategy": "SPREAD"}


def test_ray_workers_see_the_gpu_they_were_given(local_ray):
    """What ``device: auto`` resolves to in a Ray worker, with Ray setting CUDA_VISIBLE_DEVICES and without."""

    @ray.remote
    def assigned() -> tuple[list[str] | None, dict[str, str]]:
        return ray_gpu_ids(), dict(os.environ)

    ids, env = ray.get(assigned.options(num_gpus=1).remote())
    assert len(ids) == 1 and env["CUDA_VISIBLE_DEVICES"] == ids[0]  # Ray narrowed the visible devices to it
    assert resolve_device("auto", True, ids, env) == torch.device("cuda:0")
    noset = {"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}
    ids, env = ray.get(assigned.options(num_gpus=1, runtime_env=noset).remote())
    assert env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")  # left as the node has it
    visible = [gpu for gpu in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu]
    expected = visible.index(ids[0]) if visible else int(ids[0])
    assert resolve_device("auto", True, ids, env) == torch.device("cuda", expected)
    ids, env = ray.get(assigned.options(num_gpus=0).remote())
    assert ids == [] and resolve_device("auto", True, ids, env) == torch.device("cpu")
