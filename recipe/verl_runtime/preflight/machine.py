"""Hardware and environment: flash-attn, the driver, a compiler for Triton, shared and locked memory, enough GPUs
and CPUs for verl and the SAM2 pool, and where the pool landed."""

from __future__ import annotations

import importlib
import math
import os
import re
import shutil
import sys
import sysconfig
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recipe.verl_runtime.preflight.base import never_raises, on_gpu, replica_gpus, verl_gpus
from recipe.verl_runtime.preflight.files import checkpoint_model_type
from recipe.verl_runtime.preflight.layout import Layout
from reward_server.config import server_config

_FLASH_OFF = (
    "actor_rollout_ref.model.use_remove_padding=false "
    "{plus}actor_rollout_ref.model.override_config.attn_implementation=sdpa"
)


_FLASH_ONLY_REMOVE_PADDING = {"qwen2_vl", "qwen2_5_vl"}


def _flash_only_remove_padding(path: str) -> bool:
    family = checkpoint_model_type(path)
    if family is not None:
        return family in _FLASH_ONLY_REMOVE_PADDING
    return re.search(r"qwen2(\.5)?-vl", path, re.IGNORECASE) is not None  # a hub id not cached yet: its name


def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as err:  # a build for another torch or CUDA fails with OSError or undefined symbols, too
        return " ".join(f"{type(err).__name__}: {err}".split())[:200]
    return None


@never_raises
def check_attention(config: DictConfig) -> list[str]:
    """verl's attention needs flash-attn for ``flash_attention_2`` (its default) and for remove-padding on Qwen2-VL."""
    model = config.actor_rollout_ref.model
    override = model.get("override_config") or {}
    users = []
    if override.get("attn_implementation", "flash_attention_2") == "flash_attention_2":
        users.append("attn_implementation flash_attention_2")
    if model.get("use_remove_padding", False) and _flash_only_remove_padding(str(model.path)):
        users.append("use_remove_padding on Qwen2-VL")
    if not users:
        return []
    error = _import_error("flash_attn")
    if error is None:
        return []
    # Hydra adds a key only with "+"; the recipes' configs define attn_implementation, verl's defaults do not.
    plus = "" if "attn_implementation" in override else "+"
    return [
        f"{' and '.join(users)} need flash-attn, which does not import ({error}): "
        f"build it with `make flash-attn` on a node with nvcc, or set {_FLASH_OFF.format(plus=plus)}"
    ]


@never_raises
def check_driver(config: DictConfig) -> list[str]:
    """A CUDA run needs torch to reach the GPUs; counting them through NVML passes even with a too-old driver."""
    pool = server_config(config.reward_server).pool
    if not on_gpu(config) or verl_gpus(config) + pool.num_actors * pool.gpus_per_actor <= 0:
        return []
    import torch

    if torch.cuda.is_available():
        return []
    if torch.version.cuda is None:
        return [f"trainer.device=cuda but torch {torch.__version__} is a CPU build: reinstall with `make setup`"]
    return [
        f"trainer.device=cuda but torch.cuda.is_available() is false: torch {torch.__version__} needs an NVIDIA "
        f"driver for CUDA {torch.version.cuda} (R580+ for CUDA 13; `nvidia-smi` shows the driver's CUDA) and a "
        "visible GPU (CUDA_VISIBLE_DEVICES)"
    ]


def _c_compiler() -> str | None:
    """The compiler Triton would use (triton/runtime/build.py): $CC, else gcc, else clang."""
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")


def _python_header() -> Path:
    """Where Triton looks for ``Python.h`` (triton/runtime/build.py)."""
    scheme = sysconfig.get_default_scheme()
    if scheme == "posix_local":  # Debian's system Python; Triton maps it the same way
        scheme = "posix_prefix"
    return Path(sysconfig.get_paths(scheme=scheme)["include"]) / "Python.h"


@never_raises
def check_compiler(config: DictConfig) -> list[str]:
    """Triton builds a C launcher at run time for each kernel it compiles, and a GPU run always has one to compile.

    vLLM 0.24 does in every mode: eager mode (``enforce_eager``) turns its compiled graphs off but its custom ops on,
    and the op for Qwen2-VL's 3D rotary positions is a Triton kernel (``MRotaryEmbedding.forward_cuda``). Turning
    verl's or SAM2's ``torch.compile`` off would only move the failure to the first rollout, so no switch is offered.
    """
    if not on_gpu(config):
        return []
    missing = []
    if _c_compiler() is None:
        missing.append("a C compiler (gcc, clang or $CC)")
    header = _python_header()
    if not header.is_file():
        missing.append(f"Python.h ({header.parent})")
    if not missing:
        return []
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return [
        f"no {' and no '.join(missing)}, which Triton needs to build its kernels at run time: install them "
        f"(apt-get install gcc python{version}-dev); vLLM's rollout compiles Triton kernels (M-RoPE) also in eager "
        "mode, so no compile switch avoids them"
    ]


SHM_MIN_BYTES = 1 << 30
"""Less /dev/shm than this is a container's default (Docker gives 64 MiB), not a size anyone chose for a GPU job."""


@never_raises
def check_shared_memory(config: DictConfig) -> list[str]:
    """NCCL's same-node transport, vLLM's workers and Ray's object store pass tensors through ``/dev/shm``.

    NCCL fails to create its segments when it runs out ("failed to extend /dev/shm"), and Ray moves its object store
    to disk; a container's default size is the usual cause.
    """
    if not on_gpu(config):
        return []
    shm = Path("/dev/shm")
    size = shutil.disk_usage(shm).total if shm.is_dir() else 0
    if size >= SHM_MIN_BYTES:
        return []
    return [
        f"/dev/shm holds {size / 2**20:.0f} MiB, where NCCL, vLLM and Ray's object store pass tensors: give the "
        "container the host's (docker run --ipc=host) or at least 1 GiB (docker run --shm-size=16g)"
    ]


INFINIBAND = Path("/sys/class/infiniband")
"""Where Linux lists the node's RDMA devices (InfiniBand and RoCE adapters)."""


@never_raises
def check_locked_memory(config: DictConfig) -> list[str]:
    """NCCL's InfiniBand/RoCE transport between nodes pins its buffers (``ibv_reg_mr``), which a bounded memlock
    limit refuses: NCCL then fails or falls back to sockets. Containers start with 64 KiB."""
    import resource

    if not on_gpu(config) or int(config.trainer.nnodes) < 2:
        return []
    if not (INFINIBAND.is_dir() and any(INFINIBAND.iterdir())):
        return []
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return []
    return [
        f"locked memory is limited to {soft >> 10} KiB on a node with RDMA devices ({INFINIBAND}); NCCL's transport "
        "between nodes pins its buffers: ulimit -l unlimited (docker run --ulimit memlock=-1)"
    ]


CPUS_PER_VERL_GPU = 3


@never_raises
def check_gpus(config: DictConfig, available: int) -> list[str]:
    """verl's ``n_gpus_per_node x nnodes`` plus the SAM2 pool's GPUs must fit in ``available``.

    The message names a layout that fits: the GPUs per node left beside SAM2 and, where the batch no longer divides
    among them, the nearest batch size that does.
    """
    pool = server_config(config.reward_server).pool
    for_verl = verl_gpus(config)
    sam_gpus = pool.num_actors * pool.gpus_per_actor
    if for_verl + sam_gpus <= available:
        return []
    head = (
        f"{for_verl} GPUs for verl (trainer.n_gpus_per_node x trainer.nnodes) + {sam_gpus:g} for SAM2 "
        f"(reward_server.pool.num_actors x gpus_per_actor) > {available} available"
    )
    nnodes, replica = int(config.trainer.nnodes), replica_gpus(config)
    per_node = (available - math.ceil(sam_gpus)) // nnodes  # a GPU SAM2 holds in part is no whole GPU for verl
    # Whole rollout replicas only: verl leaves the GPUs past the last whole one idle.
    per_node = next((count for count in range(per_node, 0, -1) if count * nnodes % replica == 0), 0)
    if per_node < 1:
        return [
            f"{head}: no room is left for one rollout replica of {replica} GPU{'s' * (replica > 1)} beside SAM2; lower "
            "reward_server.pool.num_actors or gpus_per_actor"
        ]
    layout = replace(Layout.of(config), world=per_node * nnodes)
    override = f"trainer.n_gpus_per_node={per_node}"
    if layout.errors(suggest=False):
        batch = layout.nearest_batch()
        override += f" data.train_batch_size={batch}" if batch else " and a data.train_batch_size that divides"
    return [f"{head}: lower trainer.n_gpus_per_node: {override}"]


def _tq_cpus(config: DictConfig) -> int:
    """TransferQueue's controller plus, with SimpleStorage, one actor per storage unit (verl's V1 always runs it)."""
    backend = config.get("transfer_queue", {}).get("backend", {})
    if backend.get("storage_backend", "SimpleStorage") != "SimpleStorage":
        return 1
    return 1 + int(backend.get("SimpleStorage", {}).get("num_data_storage_units", 1))


@never_raises
def check_cpus(config: DictConfig) -> list[str]:
    """A local Ray must hold every CPU the run reserves, or a placement group waits forever without a word."""
    if not on_gpu(config):
        return []
    pool = server_config(config.reward_server).pool
    verl, sam, tq = CPUS_PER_VERL_GPU * verl_gpus(config), pool.num_actors * pool.cpus_per_actor, _tq_cpus(config)
    # verl's TaskRunner and agent/reward-loop workers reserve no CPU but need one free to be scheduled.
    need = math.ceil(verl + sam + tq + 1)
    configured = config.get("ray_kwargs", {}).get("ray_init", {}).get("num_cpus")
    have = int(configured) if configured else os.cpu_count() or 0
    if have >= need:
        return []
    return [
        f"Ray gets {have} CPUs but the run reserves {need} ({verl} for verl at {CPUS_PER_VERL_GPU} per GPU, {sam:g} "
        f"for SAM2, {tq} for TransferQueue, 1 free to schedule verl's helpers): set "
        f"ray_kwargs.ray_init.num_cpus={need} (Ray's CPUs are logical), or lower reward_server.pool.cpus_per_actor "
        "or transfer_queue.backend.SimpleStorage.num_data_storage_units"
    ]


@never_raises
def check_pool_devices(config: DictConfig, health: list[dict[str, Any]]) -> list[str]:
    """After the SAM2 pool started: in a CUDA run, an ``auto`` engine that chose the CPU has no usable GPU.

    Args:
        config: The training config.
        health: Every actor's ``health()`` (``name`` and ``device``).
    """
    engine = server_config(config.reward_server).engine
    if not on_gpu(config) or engine.device != "auto":
        return []
    on_cpu = [str(actor["name"]) for actor in health if str(actor.get("device", "")).startswith("cpu")]
    if not on_cpu:
        return []
    return [
        f"SAM2 actors {', '.join(on_cpu)} run on the CPU in a CUDA run (no GPU assigned, or torch cannot use it): "
        "give the pool GPUs (reward_server.pool.gpus_per_actor=1) and check the driver, or set "
        "reward_server.engine.device=cpu to accept it"
    ]


@never_raises
def check_sam_placement(config: DictConfig) -> list[str]:
    """Several SAM2 actors packed onto one node leave it too few GPUs for verl's per-node group."""
    pool = server_config(config.reward_server).pool
    strategy = pool.placement_strategy
    if pool.num_actors < 2 or int(config.trainer.nnodes) < 2 or strategy not in ("PACK", "STRICT_PACK"):
        return []
    return [
        f"reward_server.pool.strategy={strategy} puts the {pool.num_actors} SAM2 actors on one node, where verl's "
        f"trainer.n_gpus_per_node={config.trainer.n_gpus_per_node} GPUs then never fit: set "
        "reward_server.pool.strategy=SPREAD"
    ]


@never_raises
def check_scripted_answers(config: DictConfig) -> list[str]:
    """The CPU rollout's scripted answers (recipe/cpu/rollout.py) make a random tiny model's rewards vary; a real
    run must train on its policy's own answers only."""
    hf_cpu = OmegaConf.select(config, "actor_rollout_ref.rollout.engine_kwargs.hf_cpu", default=None) or {}
    scripted = hf_cpu.get("scripted_every", 0)
    if not scripted or not on_gpu(config):
        return []
    return [
        f"actor_rollout_ref.rollout.engine_kwargs.hf_cpu.scripted_every={scripted} mixes scripted answers into "
        "the rollouts, which only the CPU smoke run may do: set "
        "actor_rollout_ref.rollout.engine_kwargs.hf_cpu.scripted_every=0"
    ]
