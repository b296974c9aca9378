"""Two Ray nodes (a loopback cluster from ray.cluster_utils), the second declaring one GPU: the SAM2 pool routes by
image key across actors on both, and a run that joins the cluster checks the GPU node as its host."""

import asyncio

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from recipe.verl_runtime.compose import compose_recipe
from recipe.verl_runtime.launcher import check_gpu_nodes
from recipe.verl_runtime.preflight import host_checks, preflight
from reward_server.client import SamClient
from reward_server.config import EngineConfig, PoolConfig, ServerConfig
from reward_server.pool import actor_name, pool_health, shutdown_pool, start_pool
from reward_server.protocol import ImageRef, Prompt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_node_cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=1)  # a GPU in name only: CUDA stays unavailable in its tasks
    ray.init(address=cluster.address, namespace="samrl", log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_requests_route_by_image_key_across_nodes(two_node_cluster):
    config = ServerConfig(
        engine=EngineConfig(model="sam2.1_hiera_t", allow_random_weights=True, device="cpu", image_size=256),
        pool=PoolConfig(name="spread_pool", num_actors=2, gpus_per_actor=0, cpus_per_actor=1, strategy="STRICT_SPREAD"),
    )
    actors = start_pool(config)
    try:
        assert len({health["node_id"] for health in pool_health(actors)}) == 2
        client = SamClient.connect(config)
        images = [ImageRef.of((np.random.default_rng(i).random((64, 80, 3)) * 255).astype(np.uint8)) for i in range(8)]

        async def two_rounds():
            prompts = [Prompt(box=(5, 5, 60, 50)), Prompt(points=((30, 30),), labels=(1,))]
            first = await asyncio.gather(*(client.segment(image, prompts) for image in images))
            second = await asyncio.gather(*(client.segment(image, prompts) for image in images))
            return first + second

        answers = asyncio.run(two_rounds())
        for image, results in zip(images * 2, answers, strict=True):
            assert {result.served_by for result in results} == {actor_name(config.pool, client.route(image.key))}
        served = {result.served_by for results in answers for result in results}
        assert len(served) == 2  # both actors work, each on its own images
        health = pool_health(actors)
        assert sum(h["encodes"] for h in health) == len(images)  # the second round hit each actor's cache
    finally:
        shutdown_pool(config.pool)


def test_a_run_joining_a_cluster_checks_its_gpu_nodes_not_the_launching_machine(two_node_cluster):
    """CUDA is unavailable on this machine: the task holding the GPU node's GPU finds it so and names the node, while
    the launching machine's preflight leaves the host checks to the nodes."""
    config = compose_recipe("samr1", [])
    here = host_checks(config)
    assert any("torch.cuda.is_available() is false" in error for error in here)
    (gpu_node,) = [node for node in ray.nodes() if node["Alive"] and node["Resources"].get("GPU")]
    errors = check_gpu_nodes(config)
    assert errors == [f"node {gpu_node['NodeManagerAddress']}: {error}" for error in here]
    assert set(here) <= set(preflight(config)) and not set(here) & set(preflight(config, host=False))
