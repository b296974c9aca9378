"""What every preflight check shares: the one-line-report guard and readers of the training config."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

Check = Callable[..., list[str]]


def never_raises(check: Check) -> Check:
    """Turns an exception of ``check`` into its one-line report, so an odd config never crashes the launcher."""

    @functools.wraps(check)
    def guarded(config: DictConfig, *args: Any) -> list[str]:
        try:
            return check(config, *args)
        except Exception as err:  # whatever an odd config makes a check raise is a line to read, not a traceback
            detail = " ".join(f"{type(err).__name__}: {err}".split())
            return [f"{check.__name__}: cannot check this config ({detail[:300]})"]

    return guarded


def files_of(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | ListConfig | tuple) else [str(value)]


def on_gpu(config: DictConfig) -> bool:
    """Whether verl trains on CUDA; the CPU platform sets ``trainer.device=cpu`` (verl's default is ``cuda``)."""
    return str(OmegaConf.select(config, "trainer.device", default="cuda")) == "cuda"


def verl_gpus(config: DictConfig) -> int:
    return int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes)


def replica_gpus(config: DictConfig) -> int:
    """GPUs of one rollout replica: verl builds ``verl GPUs // this`` replicas and leaves the rest idle
    (``LLMServerManager._initialize_llm_servers``: tensor x data x pipeline parallel sizes)."""
    rollout = config.actor_rollout_ref.rollout
    sizes = ("tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size")
    return math.prod(int(rollout.get(size, 1) or 1) for size in sizes)
