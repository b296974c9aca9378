"""The named pool of SAM2 actors: started once, reached by name from every process.

Actors are ``{name}-{i}`` in the pool's namespace, placed in a placement group ``{name}-pg`` whose bundles reserve
their GPUs, so a trainer that starts the pool first leaves the remaining GPUs to verl's worker groups.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.util import get_placement_group, placement_group, remove_placement_group
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from reward_server.actor import SamActor
from reward_server.config import PoolConfig, ServerConfig

logger = logging.getLogger(__name__)

_MAX_CONCURRENT_CALLS = 10_000  # calls queue on the actor's event loop; the engine runs one batch at a time


def actor_name(pool: PoolConfig, index: int) -> str:
    return f"{pool.name}-{index}"


def _bundles(pool: PoolConfig) -> list[dict[str, float]]:
    bundle = {"CPU": pool.cpus_per_actor}
    if pool.gpus_per_actor:
        bundle["GPU"] = pool.gpus_per_actor
    return [dict(bundle) for _ in range(pool.num_actors)]


def _placement_group(pool: PoolConfig, timeout_s: float) -> PlacementGroup:
    name = f"{pool.name}-pg"
    try:
        group = get_placement_group(name)
    except ValueError:
        lifetime = "detached" if pool.detached else None
        group = placement_group(_bundles(pool), strategy=pool.placement_strategy, name=name, lifetime=lifetime)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        raise RuntimeError(
            f"cannot reserve {pool.num_actors} x {_bundles(pool)[0]} ({pool.placement_strategy}) for the SAM2 pool "
            f"within {timeout_s:.0f}s; the cluster has {ray.cluster_resources()}. Lower "
            "reward_server.pool.num_actors or gpus_per_actor, or free the resources."
        )
    return group


def start_pool(config: ServerConfig, timeout_s: float = 300.0) -> list[ActorHandle]:
    """Starts the pool's actors, or attaches to those already running under the same names.

    Args:
        config: Engine, actor and pool settings.
        timeout_s: How long to wait for the pool's resources and for every actor to answer ``health()``.

    Returns:
        The actor handles, in index order.
    """
    pool = config.pool
    group = _placement_group(pool, timeout_s)
    remote = ray.remote(SamActor)
    actors = []
    for index in range(pool.num_actors):
        name = actor_name(pool, index)
        actors.append(
            remote.options(
                name=name,
                namespace=pool.namespace,
                get_if_exists=True,
                lifetime="detached" if pool.detached else None,
                num_cpus=pool.cpus_per_actor,
                num_gpus=pool.gpus_per_actor,
                max_restarts=pool.max_restarts,
                max_task_retries=pool.max_task_retries,
                max_concurrency=_MAX_CONCURRENT_CALLS,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index),
            ).remote(config.engine, config.actor, name)
        )
    ray.get([actor.health.remote() for actor in actors], timeout=timeout_s)
    return actors


def connect_pool(pool: PoolConfig) -> list[ActorHandle]:
    """The running pool's actors, found by name.

    Raises:
        RuntimeError: When no actor of the pool exists, saying how to start one.
    """
    actors = []
    while True:
        try:
            actors.append(ray.get_actor(actor_name(pool, len(actors)), namespace=pool.namespace))
        except ValueError:
            break
    if not actors:
        raise RuntimeError(
            f"no SAM2 pool {pool.name!r} in namespace {pool.namespace!r}: start it with `python -m reward_server` "
            "or a recipe's entry point, on the same Ray cluster"
        )
    return actors


def pool_health(actors: list[ActorHandle], timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Every actor's ``health()``."""
    return ray.get([actor.health.remote() for actor in actors], timeout=timeout_s)


def shutdown_pool(pool: PoolConfig) -> None:
    """Kills the pool's actors and releases its placement group."""
    for actor in _existing_actors(pool):
        ray.kill(actor, no_restart=True)
    try:
        remove_placement_group(get_placement_group(f"{pool.name}-pg"))
    except ValueError:
        logger.debug("no placement group for pool %s", pool.name)


def _existing_actors(pool: PoolConfig) -> list[ActorHandle]:
    try:
        return connect_pool(pool)
    except RuntimeError:
        return []
