"""Checks a training config before Ray starts or any GPU is taken; each problem is one line saying what to fix."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
from omegaconf import DictConfig, ListConfig

from reward_server.config import server_config
from reward_server.sam2_build import HF_MODEL_ID_TO_FILENAMES

REQUIRED_COLUMNS = ("data_source", "prompt", "images", "reward_model", "extra_info", "agent_name")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _files(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | ListConfig | tuple) else [str(value)]


def check_model(config: DictConfig) -> list[str]:
    path = str(config.actor_rollout_ref.model.path)
    if Path(path).expanduser().is_dir():
        return [] if (Path(path).expanduser() / "config.json").is_file() else [f"model {path} has no config.json"]
    if _HUB_ID.match(path) and not path.startswith((".", "/", "~")):
        return []  # a hub id, fetched by verl where the machine is online
    return [f"model {path} not found: set actor_rollout_ref.model.path=/path/to/Qwen2.5-VL-7B-Instruct"]


def check_sam_checkpoint(config: DictConfig) -> list[str]:
    engine = server_config(config.reward_server).engine
    if engine.checkpoint is None:
        if engine.allow_random_weights:
            return []
        return ["no SAM2 checkpoint: set reward_server.engine.checkpoint=/path/to/sam2.1_hiera_large.pt"]
    if Path(engine.checkpoint).expanduser().is_file() or engine.checkpoint in HF_MODEL_ID_TO_FILENAMES:
        return []
    return [f"SAM2 checkpoint {engine.checkpoint} not found: set reward_server.engine.checkpoint to an existing file"]


def check_datasets(config: DictConfig) -> list[str]:
    errors = []
    for key in ("train_files", "val_files"):
        for file in _files(config.data[key]):
            path = Path(file).expanduser()
            if not path.is_file():
                errors.append(f"data.{key}: {file} not found (build it with `make data`, or set data.{key}=...)")
                continue
            try:
                schema = pq.read_schema(path)
                rows = pq.read_metadata(path).num_rows
            except Exception as err:  # pyarrow raises several types for non-parquet files
                errors.append(f"data.{key}: {file} is not a parquet file ({type(err).__name__})")
                continue
            missing = [column for column in REQUIRED_COLUMNS if column not in schema.names]
            if missing:
                errors.append(f"data.{key}: {file} lacks columns {missing}; rebuild it with python -m data_prep")
            elif rows == 0:
                errors.append(f"data.{key}: {file} has no rows")
            elif key == "train_files" and rows < config.data.train_batch_size:
                errors.append(f"data.train_files: {file} has {rows} rows, fewer than data.train_batch_size")
    return errors


def check_gpus(config: DictConfig, available: int) -> list[str]:
    """verl's ``n_gpus_per_node x nnodes`` plus the SAM2 pool's GPUs must fit in ``available``."""
    pool = server_config(config.reward_server).pool
    verl_gpus = int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes)
    sam_gpus = pool.num_actors * pool.gpus_per_actor
    if verl_gpus + sam_gpus <= available:
        return []
    return [
        f"{verl_gpus} GPUs for verl (trainer.n_gpus_per_node x trainer.nnodes) + {sam_gpus:g} for SAM2 "
        f"(reward_server.pool.num_actors x gpus_per_actor) > {available} available: lower trainer.n_gpus_per_node"
    ]


CHECKS: list[Callable[[DictConfig], list[str]]] = [check_model, check_sam_checkpoint, check_datasets]


def preflight(config: DictConfig, available_gpus: int | None = None) -> list[str]:
    """All problems found; the GPU check runs when the number of available GPUs is known."""
    errors = [error for check in CHECKS for error in check(config)]
    if available_gpus is not None:
        errors += check_gpus(config, available_gpus)
    return errors
