"""Runs a recipe: preflight, then verl's ``run_ppo`` with a TaskRunner that starts the SAM2 pool before training.

verl's ``run_ppo`` owns Ray's start: it turns the config into environment settings (full determinism, RL insight)
before ``ray.init``, so every worker sees them. The project only adds to what ``ray.init`` receives (loopback
dashboard, virtual GPUs on the CPU platform, where TensorBoard writes) and to what the TaskRunner does first: the
SAM2 pool takes its resources before verl's resource pools take theirs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import ray
from omegaconf import DictConfig, OmegaConf, open_dict

from recipe.verl_runtime.cpu_selection import PLATFORM, selected
from recipe.verl_runtime.preflight import absolute_paths, check_gpus, check_pool_devices, host_checks, preflight
from reward_server.config import to_dataclass
from reward_server.ray_setup import RayConfig


def _fail(errors: list[str]) -> None:
    for error in errors:
        print(f"preflight: {error}", file=sys.stderr)
    sys.exit(2)


def _ray_config(config: DictConfig) -> RayConfig:
    """The run's ``samrl.ray`` block; its ``cluster`` says whether the run joins a running cluster."""
    return to_dataclass(config.samrl.ray, RayConfig)


def ray_init_kwargs(config: DictConfig) -> dict[str, Any]:
    """``ray_kwargs.ray_init`` as the run needs it: verl's keys plus the dashboard, virtual GPUs and env vars.

    A run joins the cluster in ``samrl.ray.address`` (``RAY_ADDRESS``) as it is; otherwise it starts a local Ray
    bound to loopback, with the dashboard as ``samrl.ray`` sets it. On the CPU platform the local
    Ray declares one virtual GPU per verl worker, because verl's resource pools place workers on ``GPU`` bundles.
    """
    kwargs = OmegaConf.to_container(config.ray_kwargs.get("ray_init", {}), resolve=True)
    env_vars = kwargs.setdefault("runtime_env", {}).setdefault("env_vars", {})
    output_dir = Path(config.samrl.output_dir).resolve()
    env_vars["TENSORBOARD_DIR"] = str(output_dir / "tensorboard")
    # verl's "file" logger truncates its file on start: one file per launch keeps a resumed run's earlier steps.
    env_vars.setdefault("VERL_FILE_LOGGER_PATH", str(metrics_file(output_dir)))
    if selected():
        env_vars["VERL_PLATFORM"] = PLATFORM
    ray_config = _ray_config(config)
    if ray_config.cluster:
        kwargs["address"] = ray_config.cluster
        for key in ("num_cpus", "num_gpus"):  # a running cluster has its own resources
            kwargs.pop(key, None)
        return kwargs
    kwargs.update(address=None, **ray_config.local_kwargs())
    if selected():
        kwargs["num_gpus"] = int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes)
    return kwargs


def metrics_file(output_dir: Path) -> Path:
    """Where this launch's step metrics go (verl's ``file`` logger, one JSON line per step)."""
    path = output_dir / "metrics" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _task_runner_class() -> Any:
    from verl.trainer.main_ppo import TaskRunnerV1

    @ray.remote
    class SamTaskRunner(TaskRunnerV1.__ray_actor_class__):
        """verl's V1 TaskRunner, which first checks the cluster and starts the SAM2 pool the rewards call."""

        def run(self, config: DictConfig) -> None:
            from reward_server.config import server_config
            from reward_server.pool import pool_health, start_pool

            if _ray_config(config).cluster:
                errors = check_gpus(config, int(ray.cluster_resources().get("GPU", 0))) + check_gpu_nodes(config)
                if errors:
                    raise RuntimeError("; ".join(errors))
            print(f"Ray dashboard: {_dashboard_url() or 'disabled'}", flush=True)
            server = server_config(config.reward_server)
            actors = start_pool(server)
            health = pool_health(actors)
            errors = check_pool_devices(config, health)
            if errors:
                raise RuntimeError("; ".join(errors))
            devices = ", ".join(f"{actor['name']} on {actor['device']}" for actor in health)
            print(f"SAM2 pool {server.pool.name!r} ready: {devices}", flush=True)
            super().run(config)

    return SamTaskRunner


NODE_CHECK_TIMEOUT_S = 300


def check_gpu_nodes(config: DictConfig) -> list[str]:
    """:func:`recipe.verl_runtime.preflight.host_checks` on every GPU node of the cluster, as ``node <address>: ...``
    lines.

    Each runs in a task that holds one of the node's GPUs, before the SAM2 pool or verl take any: Ray hides the GPUs
    from a task that holds none (an empty ``CUDA_VISIBLE_DEVICES``), and the driver, compiler and attention backend
    that matter are those of the nodes that run the work, not of the machine that launched it.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node for node in ray.nodes() if node["Alive"] and node["Resources"].get("GPU", 0) >= 1]
    check = ray.remote(num_cpus=0, num_gpus=1)(host_checks)
    pending = {
        check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
            config
        ): node["NodeManagerAddress"]
        for node in nodes
    }
    done, late = ray.wait(list(pending), num_returns=len(pending), timeout=NODE_CHECK_TIMEOUT_S)
    errors = [f"node {pending[ref]}: {error}" for ref in done for error in ray.get(ref)]
    for ref in late:
        ray.cancel(ref, force=True)
        errors.append(f"node {pending[ref]}: no GPU came free for the host checks within {NODE_CHECK_TIMEOUT_S} s")
    return errors


def _dashboard_url() -> str | None:
    from ray._private.services import get_webui_url_from_internal_kv

    url = get_webui_url_from_internal_kv()
    return f"http://{url}" if url and not url.startswith("http") else url


def size_rollout_context(config: DictConfig) -> None:
    """Sets vLLM's context (``rollout.max_model_len``), where the run leaves it unset, to its longest sequence.

    verl 0.9.1 then passes the model's ``max_position_embeddings`` (128,000 for Qwen2.5-VL): vLLM's start-up check
    that one such sequence fits its KV cache (about 6.8 GiB at 57,344 B a token for the 7B) passes or fails on a
    margin nobody sized, and its scheduler plans for sequences 50 times longer than ours. A sequence is at most the
    prompt plus the response, every turn of the workflow loop included: the loop ends a conversation at
    ``max_response_length``, and verl caps each turn's new tokens at what the context has left.
    """
    rollout = config.actor_rollout_ref.rollout
    if rollout.get("max_model_len") is None:
        with open_dict(config):
            rollout.max_model_len = int(config.data.max_prompt_length) + int(config.data.max_response_length)


def launch(config: DictConfig) -> None:
    """Trains with ``config``; exits with status 2 and one line per problem when preflight fails."""
    absolute_paths(config)  # the TaskRunner may run on another node, in another working directory
    size_rollout_context(config)
    # A cluster's GPUs are counted once Ray runs; the CPU platform's are virtual.
    cluster = _ray_config(config).cluster
    local_gpus = None if cluster or selected() else _local_gpu_count()
    errors = preflight(config, available_gpus=local_gpus, host=cluster is None)
    if errors:
        _fail(errors)
    # verl is imported only after preflight: its import is slow and noisy, and a failing check should read cleanly.
    from verl.trainer.main_ppo import run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    # On one machine Ray binds loopback only; a cluster keeps its own node addresses.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with open_dict(config):
        config.ray_kwargs.ray_init = ray_init_kwargs(config)
    print(
        f"outputs: {Path(config.samrl.output_dir).resolve()} (checkpoints/, tensorboard/, gallery/, hydra/)", flush=True
    )
    run_ppo(config, task_runner_class=_task_runner_class())


def _local_gpu_count() -> int:
    # Counting through NVML creates no CUDA context, so no GPU memory is taken before the pools exist.
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return 0
    import torch

    return torch.cuda.device_count()
