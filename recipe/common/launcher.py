"""Runs a recipe: preflight, Ray, the SAM2 pool on its own GPUs, then verl's V1 trainer.

Ray is started here (with verl's own runtime environment) rather than by verl, so the dashboard URL can be printed
and the SAM2 pool can reserve its GPUs before verl's resource pools take theirs; verl's ``run_ppo`` then finds Ray
running and uses it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import ray
from omegaconf import DictConfig, OmegaConf

from recipe.common.preflight import check_gpus, preflight
from reward_server.config import server_config
from reward_server.pool import pool_health, start_pool
from reward_server.ray_setup import init_ray


def _fail(errors: list[str]) -> None:
    for error in errors:
        print(f"preflight: {error}", file=sys.stderr)
    sys.exit(2)


def ray_runtime_env(config: DictConfig) -> dict:
    """verl's PPO runtime environment, the run's ``ray_kwargs.ray_init.runtime_env``, and where TensorBoard writes."""
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    runtime_env = OmegaConf.merge(
        get_ppo_ray_runtime_env(config), config.ray_kwargs.get("ray_init", {}).get("runtime_env", {})
    )
    runtime_env = OmegaConf.to_container(runtime_env, resolve=True)
    env_vars = runtime_env.setdefault("env_vars", {})
    env_vars["TENSORBOARD_DIR"] = str(Path(config.samrl.output_dir).resolve() / "tensorboard")
    if config.transfer_queue.enable:  # as verl's run_ppo does when it starts Ray itself
        env_vars["TRANSFER_QUEUE_ENABLE"] = "1"
    return runtime_env


def launch(config: DictConfig) -> None:
    """Trains with ``config``; exits with status 2 and one line per problem when preflight fails."""
    address = config.samrl.ray_address or None
    local_gpus = None if address else _local_gpu_count()
    errors = preflight(config, available_gpus=local_gpus)
    if errors:
        _fail(errors)
    # verl is imported only after preflight: its import is slow and noisy, and a failing check should read cleanly.
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    server = server_config(config.reward_server)
    ray_init = OmegaConf.to_container(config.ray_kwargs.get("ray_init", {}), resolve=True)
    dashboard = init_ray(
        address=address,
        num_cpus=ray_init.get("num_cpus"),
        dashboard_host=config.samrl.dashboard_host,
        dashboard_port=config.samrl.dashboard_port,
        runtime_env=ray_runtime_env(config),
    )
    if address:
        errors = check_gpus(config, int(ray.cluster_resources().get("GPU", 0)))
        if errors:
            _fail(errors)
    output_dir = Path(config.samrl.output_dir).resolve()
    print(f"Ray dashboard: {dashboard or 'disabled'}", flush=True)
    print(f"outputs: {output_dir} (checkpoints/, tensorboard/, hydra/)", flush=True)
    actors = start_pool(server)
    devices = ", ".join(f"{h['name']} on {h['device']}" for h in pool_health(actors))
    print(f"SAM2 pool {server.pool.name!r} ready: {devices}", flush=True)
    run_ppo(config, task_runner_class=TaskRunnerV1)


def _local_gpu_count() -> int:
    # Counting through NVML creates no CUDA context, so no GPU memory is taken before the pools exist.
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return 0
    import torch

    return torch.cuda.device_count()
