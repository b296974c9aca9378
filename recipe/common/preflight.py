"""Checks a training config before Ray starts or any GPU is taken; each problem is one line saying what to fix.

:func:`preflight` runs every check of :data:`CHECKS`, then, when the run starts its own Ray on this machine, the
checks of its GPUs and CPUs. A check that cannot read an odd config answers with a line as well, never an exception.
:func:`absolute_paths` and :func:`check_pool_devices` serve the launcher before and after the SAM2 pool starts.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import re
import shutil
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from recipe.common.checkpoints import resume_step, step_folder
from recipe.common.dataset_rows import MASK_COMPREHENSION, TASK_AGENTS, WORKFLOW, GroundTruth, RewardModel, Row
from recipe.common.gallery import GalleryConfig
from recipe.common.run_config import schemas
from reward_server.config import BOX_MODEL, EngineConfig, server_config, to_dataclass
from reward_server.masks import MODEL_SIZE
from reward_server.sam2_build import HF_MODEL_ID_TO_FILENAMES
from reward_server.sam3_engine import SAM3_MODELS, SAM3_TINY_MODEL

REQUIRED_COLUMNS = (
    Row.data_source.name,
    Row.prompt.name,
    Row.images.name,
    Row.reward_model.name,
    Row.extra_info.name,
    Row.agent_name.name,
)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_FLASH_OFF = (
    "actor_rollout_ref.model.use_remove_padding=false "
    "{plus}actor_rollout_ref.model.override_config.attn_implementation=sdpa"
)
# Model types whose remove-padding attention verl replaces by a flash-attn-only one (its monkey_patch.py).
_FLASH_ONLY_REMOVE_PADDING = {"qwen2_vl", "qwen2_5_vl"}
# CPUs in each GPU bundle of verl's resource pools (ResourcePoolManager.max_colocate_count: one per colocated group).
CPUS_PER_VERL_GPU = 3
_SHARD = re.compile(r"^model_world_size_(\d+)_rank_\d+\.pt$")
WORKFLOW_AGENT = TASK_AGENTS[WORKFLOW]
# Qwen2.5-VL turns each 28x28 pixel block (2x2 patches of 14) into one token: 900 for the 840x840 model image
# under its own processor config (which keeps that image whole).
IMAGE_TOKENS = (MODEL_SIZE // 28) ** 2
# Q^P, the question and the chat-turn markers of one overlay turn: 134 for a 9-word question with the Qwen2.5
# tokenizer, 148 for a 23-word one; 156 leaves room for long ReasonSeg-style questions.
OVERLAY_TEXT_TOKENS = 156
# Room for one model answer (reasoning + JSON) in the workflow's shared response budget.
ANSWER_TOKENS = 512

Check = Callable[..., list[str]]


def _never_raises(check: Check) -> Check:
    """Turns an exception of ``check`` into its one-line report, so an odd config never crashes the launcher."""

    @functools.wraps(check)
    def guarded(config: DictConfig, *args: Any) -> list[str]:
        try:
            return check(config, *args)
        except Exception as err:  # whatever an odd config makes a check raise is a line to read, not a traceback
            detail = " ".join(f"{type(err).__name__}: {err}".split())
            return [f"{check.__name__}: cannot check this config ({detail[:300]})"]

    return guarded


def _files(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | ListConfig | tuple) else [str(value)]


def _on_gpu(config: DictConfig) -> bool:
    """Whether verl trains on CUDA; the CPU platform sets ``trainer.device=cpu`` (verl's default is ``cuda``)."""
    return str(OmegaConf.select(config, "trainer.device", default="cuda")) == "cuda"


def _verl_gpus(config: DictConfig) -> int:
    return int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes)


def _replica_gpus(config: DictConfig) -> int:
    """GPUs of one rollout replica: verl builds ``verl GPUs // this`` replicas and leaves the rest idle
    (``LLMServerManager._initialize_llm_servers``: tensor x data x pipeline parallel sizes)."""
    rollout = config.actor_rollout_ref.rollout
    sizes = ("tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size")
    return math.prod(int(rollout.get(size, 1) or 1) for size in sizes)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    # Read now rather than from huggingface_hub.constants, which froze the environment when it was imported.
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _cached(repo_id: str, filename: str) -> Path | None:
    """``filename`` of hub repo ``repo_id`` in the local Hugging Face cache, without any network call."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def _hub_errors(repo_id: str, filename: str, key: str) -> list[str]:
    """A hub id must be in the local cache before the run: downloaded once, not by every worker as it starts.

    Online, each worker process that loads it (every actor, rollout and SAM2 worker, on every node) would fetch it
    at start; on a node without network and without ``HF_HUB_OFFLINE`` each would wait out its retries instead.
    """
    if _cached(repo_id, filename) is not None:
        return []
    where = "HF_HUB_OFFLINE is set and " if _hub_offline() else ""
    return [
        f"{key}={repo_id} is a hub id and {where}the Hugging Face cache lacks it: run `hf download {repo_id}` once "
        f"before the run, where online and with the HF_HOME every node reads, or set {key}=/local/path"
    ]


@_never_raises
def check_model(config: DictConfig) -> list[str]:
    path = str(config.actor_rollout_ref.model.path)
    if Path(path).expanduser().is_dir():
        if not (Path(path).expanduser() / "config.json").is_file():
            return [f"model {path} has no config.json"]
        return _coordinate_errors(path)
    if _HUB_ID.match(path) and not path.startswith((".", "/", "~")):
        return _hub_errors(path, "config.json", "actor_rollout_ref.model.path") or _coordinate_errors(path)
    return [f"model {path} not found: set actor_rollout_ref.model.path=/path/to/Qwen2.5-VL-7B-Instruct"]


def _coordinate_errors(path: str) -> list[str]:
    """The rewards read a model's answers in its family's coordinate convention: a family with none known would
    fail in every reward worker at its first answer."""
    from recipe.common.coordinates import MODEL_TYPES

    model_type = _model_type(path)
    if model_type is None or model_type in MODEL_TYPES:
        return []
    return [
        f"model {path} is a {model_type!r} model, whose coordinate convention is not known (known: "
        f"{sorted(MODEL_TYPES)}); add it to recipe/common/coordinates.py"
    ]


@_never_raises
def check_sam_checkpoint(config: DictConfig) -> list[str]:
    engine = server_config(config.reward_server).engine
    if engine.model == BOX_MODEL:  # the box-only segmenter loads nothing
        return []
    if engine.model in SAM3_MODELS:
        return _sam3_checkpoint_errors(engine)
    if engine.checkpoint is None:
        if engine.allow_random_weights:
            return []
        return ["no SAM2 checkpoint: set reward_server.engine.checkpoint=/path/to/sam2.1_hiera_large.pt"]
    if Path(engine.checkpoint).expanduser().is_file():
        return []
    if engine.checkpoint in HF_MODEL_ID_TO_FILENAMES:
        _, filename = HF_MODEL_ID_TO_FILENAMES[engine.checkpoint]
        return _hub_errors(engine.checkpoint, filename, "reward_server.engine.checkpoint")
    return [f"SAM2 checkpoint {engine.checkpoint} not found: set reward_server.engine.checkpoint to an existing file"]


def _sam3_checkpoint_errors(engine: EngineConfig) -> list[str]:
    """SAM 3 loads a transformers checkpoint: a directory, or a hub id (``facebook/sam3``) in the local cache."""
    if engine.model == SAM3_TINY_MODEL:
        refused = "reward_server.engine.model=sam3_tiny has random weights: set allow_random_weights"
        return [] if engine.allow_random_weights else [refused]
    if engine.checkpoint is None:
        return ["no SAM 3 checkpoint: set reward_server.engine.checkpoint=/path/to/sam3 (or facebook/sam3, cached)"]
    local = Path(engine.checkpoint).expanduser()
    if local.is_dir():
        return [] if (local / "config.json").is_file() else [f"SAM 3 checkpoint {local} has no config.json"]
    if _HUB_ID.match(engine.checkpoint):
        return _hub_errors(engine.checkpoint, "config.json", "reward_server.engine.checkpoint")
    return [f"SAM 3 checkpoint {engine.checkpoint} not found: set reward_server.engine.checkpoint to its directory"]


@_never_raises
def check_datasets(config: DictConfig) -> list[str]:
    errors, train_rows, truth_fields = [], 0, {}
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
            else:
                errors += _stale_mask_comprehension(path, schema, f"data.{key}")
                if key == "train_files":
                    train_rows += rows
                    truth_fields[file] = _ground_truth_fields(schema)
    everything = set().union(*truth_fields.values())
    for file, fields in truth_fields.items():
        if fields != everything:  # verl concatenates the files into one dataset only when their schemas agree
            errors.append(
                f"data.train_files: {file} was written with an older row schema (its ground truth lacks "
                f"{sorted(everything - fields)}) and will not concatenate with the others; rebuild it with `make data`"
            )
    if not errors and train_rows < config.data.train_batch_size:
        # verl concatenates the list into one dataset, so the batch is drawn from all files together.
        errors.append(f"data.train_files: {train_rows} rows in all, fewer than data.train_batch_size")
    return errors


def _ground_truth_fields(schema: pa.Schema) -> set[str]:
    reward_model = schema.field(Row.reward_model.name).type
    if not pa.types.is_struct(reward_model) or reward_model.get_field_index(RewardModel.ground_truth.name) < 0:
        return set()
    truth = reward_model.field(RewardModel.ground_truth.name).type
    return {truth.field(i).name for i in range(truth.num_fields)} if pa.types.is_struct(truth) else set()


def _stale_mask_comprehension(path: Path, schema: pa.Schema, key: str) -> list[str]:
    """Mask-comprehension rows prepared before data_prep stored the shown mask's logits cannot be refined."""
    if GroundTruth.init_logits.name in _ground_truth_fields(schema):
        return []
    column = Row.agent_name.name
    agents = pq.read_table(path, columns=[column]).column(column).unique().to_pylist()
    if TASK_AGENTS[MASK_COMPREHENSION] not in agents:
        return []
    return [
        f"{key}: {path} holds mask-comprehension rows without init_logits; rerun `make data` and `make data-veteran`"
    ]


def _model_type(path: str) -> str | None:
    """``model_type`` from the checkpoint's ``config.json``, in its directory or the hub cache; None when unread."""
    local = Path(path).expanduser()
    if local.is_dir():
        config_file = local / "config.json"
    elif _HUB_ID.match(path):
        config_file = _cached(path, "config.json")
    else:
        return None
    if config_file is None or not config_file.is_file():
        return None
    return json.loads(config_file.read_text()).get("model_type")


def _flash_only_remove_padding(path: str) -> bool:
    model_type = _model_type(path)
    if model_type is not None:
        return model_type in _FLASH_ONLY_REMOVE_PADDING
    return re.search(r"qwen2(\.5)?-vl", path, re.IGNORECASE) is not None  # a hub id not cached yet: its name


def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as err:  # a build for another torch or CUDA fails with OSError or undefined symbols, too
        return " ".join(f"{type(err).__name__}: {err}".split())[:200]
    return None


@_never_raises
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


@_never_raises
def check_driver(config: DictConfig) -> list[str]:
    """A CUDA run needs torch to reach the GPUs; counting them through NVML passes even with a too-old driver."""
    pool = server_config(config.reward_server).pool
    if not _on_gpu(config) or _verl_gpus(config) + pool.num_actors * pool.gpus_per_actor <= 0:
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


@_never_raises
def check_compiler(config: DictConfig) -> list[str]:
    """Triton builds a C launcher at run time for each kernel it compiles, and a GPU run always has one to compile.

    vLLM 0.24 does in every mode: eager mode (``enforce_eager``) turns its compiled graphs off but its custom ops on,
    and the op for Qwen2-VL's 3D rotary positions is a Triton kernel (``MRotaryEmbedding.forward_cuda``). Turning
    verl's or SAM2's ``torch.compile`` off would only move the failure to the first rollout, so no switch is offered.
    """
    if not _on_gpu(config):
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


@_never_raises
def check_shared_memory(config: DictConfig) -> list[str]:
    """NCCL's same-node transport, vLLM's workers and Ray's object store pass tensors through ``/dev/shm``.

    NCCL fails to create its segments when it runs out ("failed to extend /dev/shm"), and Ray moves its object store
    to disk; a container's default size is the usual cause.
    """
    if not _on_gpu(config):
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


@_never_raises
def check_locked_memory(config: DictConfig) -> list[str]:
    """NCCL's InfiniBand/RoCE transport between nodes pins its buffers (``ibv_reg_mr``), which a bounded memlock
    limit refuses: NCCL then fails or falls back to sockets. Containers start with 64 KiB."""
    import resource

    if not _on_gpu(config) or int(config.trainer.nnodes) < 2:
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


@dataclass(frozen=True)
class _Layout:
    """What verl's batch splitting depends on; a micro-batch size of None means dynamic batch size (no division).

    The update splits each mini-batch of ``ppo_mini_batch_size x n`` responses over the data-parallel ranks and each
    rank's share into micro-batches; log-probs split the whole ``train_batch_size x n`` the same way
    (verl/workers/engine_workers.py, verl/workers/engine/utils.py ``prepare_micro_batches``).
    """

    batch: int
    n: int
    world: int
    replica: int
    sp: int
    mini: int | None
    mini_follows_batch: bool
    update_micro: int | None
    infer_micros: tuple[tuple[str, int | None], ...]

    @classmethod
    def of(cls, config: DictConfig) -> _Layout:
        actor_rollout_ref = config.actor_rollout_ref
        actor, rollout, ref = actor_rollout_ref.actor, actor_rollout_ref.rollout, actor_rollout_ref.ref
        dynamic = bool(actor.get("use_dynamic_bsz", False))
        raw_mini = OmegaConf.to_container(actor, resolve=False).get("ppo_mini_batch_size")
        infer = [("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", rollout, "log_prob_use_dynamic_bsz")]
        if actor.get("use_kl_loss", False) or config.algorithm.get("use_kl_in_reward", False):
            infer.append(("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", ref, "log_prob_use_dynamic_bsz"))
        return cls(
            batch=int(config.data.train_batch_size),
            n=int(rollout.n),
            world=_verl_gpus(config),
            replica=_replica_gpus(config),
            sp=int(actor.get("ulysses_sequence_parallel_size", 1) or 1),
            mini=None if dynamic else int(actor.ppo_mini_batch_size),
            mini_follows_batch=raw_mini == "${data.train_batch_size}",
            update_micro=None if dynamic else actor.get("ppo_micro_batch_size_per_gpu"),
            infer_micros=tuple(
                (key, None if node.get(flag, False) else node.get(key.rsplit(".", 1)[1])) for key, node, flag in infer
            ),
        )

    def with_batch(self, batch: int) -> _Layout:
        follows = self.mini_follows_batch and self.mini is not None
        return replace(self, batch=batch, mini=batch if follows else self.mini)

    def errors(self, suggest: bool = True) -> list[str]:
        """One line per size verl would reject; ``suggest`` adds a value that works to each."""
        if self.world < 1:
            return [f"trainer.n_gpus_per_node x trainer.nnodes = {self.world}: verl needs at least one GPU"]
        if self.world % self.replica:
            return [
                f"{self.world} GPUs (trainer.n_gpus_per_node x trainer.nnodes) do not divide into rollout replicas of "
                f"{self.replica} (actor_rollout_ref.rollout's tensor x data x pipeline parallel sizes): verl would "
                f"build {self.world // self.replica} and leave {self.world % self.replica} idle"
            ]
        if self.world % self.sp:
            return [
                f"{self.world} GPUs (trainer.n_gpus_per_node x trainer.nnodes) do not divide by "
                f"actor_rollout_ref.actor.ulysses_sequence_parallel_size={self.sp}"
            ]
        dp, total = self.world // self.sp, self.batch * self.n
        if total % self.world:
            if self.mini is None:  # verl checks this only without dynamic batch size, which balances by tokens
                return []
            fix = self.nearest_batch() if suggest else None
            return [
                f"data.train_batch_size={self.batch} x actor_rollout_ref.rollout.n={self.n} = {total} responses do not "
                f"divide among {self.world} GPUs (trainer.n_gpus_per_node x trainer.nnodes): "
                + (f"set data.train_batch_size={fix}" if fix else "change data.train_batch_size")
            ]
        errors = []
        if self.mini is not None:
            errors += self._mini_errors(dp, suggest)
        for key, micro in self.infer_micros:
            if micro and (total // dp) % micro:
                errors.append(_micro_error(key, micro, total // dp, "data.train_batch_size x rollout.n", dp))
        return errors

    def _mini_errors(self, dp: int, suggest: bool) -> list[str]:
        key = "actor_rollout_ref.actor.ppo_mini_batch_size"
        if self.mini > self.batch:
            return [f"{key}={self.mini} exceeds data.train_batch_size={self.batch}: set {key}={self.batch}"]
        if (self.mini * self.n) % dp:
            fix = None
            if suggest:  # the candidates themselves are checked without suggestions, so the search ends
                fix = _nearest(self.mini, self.batch, lambda m: replace(self, mini=m).errors(suggest=False) == [])
            return [
                f"{key}={self.mini} x rollout.n={self.n} responses do not divide among {dp} data-parallel ranks: "
                + (f"set {key}={fix}" if fix else f"change {key}")
            ]
        per_rank = self.mini * self.n // dp
        if self.update_micro and per_rank % self.update_micro:
            key = "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"
            return [_micro_error(key, self.update_micro, per_rank, "ppo_mini_batch_size x rollout.n", dp)]
        return []

    def nearest_batch(self) -> int | None:
        """The ``train_batch_size`` nearest the current one (smaller on a tie) that every size here divides."""
        sizes = [self.update_micro or 1, *(micro or 1 for _, micro in self.infer_micros)]
        # With the mini-batch following the batch, world x lcm(micro sizes) works, so the search ends by there.
        limit = max(self.batch, self.mini or 0) + self.world * math.lcm(*sizes)
        return _nearest(self.batch, limit, lambda b: self.with_batch(b).errors(suggest=False) == [])


def _nearest(start: int, limit: int, ok: Callable[[int], bool]) -> int | None:
    """The value in ``1..limit`` nearest ``start`` (smaller first) for which ``ok`` holds."""
    for distance in range(max(start, limit)):
        for value in (start - distance, start + distance):
            if 1 <= value <= limit and ok(value):
                return value
    return None


def _micro_error(key: str, micro: int, per_rank: int, source: str, dp: int) -> str:
    works = max(d for d in range(1, micro + 1) if per_rank % d == 0)
    return (
        f"{key}={micro} does not divide the {per_rank} responses of each GPU ({source} / {dp} GPUs): set {key}={works}"
    )


@_never_raises
def check_batch_sizes(config: DictConfig) -> list[str]:
    """Every batch split verl makes must come out even, or the first ``compute_log_prob`` or update fails."""
    return _Layout.of(config).errors()


def _workflow_files(config: DictConfig) -> Iterator[str]:
    column = Row.agent_name.name
    for file in dict.fromkeys(_files(config.data.train_files)):
        path = Path(file).expanduser()
        if path.is_file() and column in pq.read_schema(path).names:
            agents = pq.read_table(path, columns=[column]).column(column)
            if pc.any(pc.equal(agents, WORKFLOW_AGENT)).as_py():
                yield file


def image_tokens(model_path: str) -> int:
    """Tokens of one 840x840 model image under the checkpoint's own image processor (a directory, or a hub id in
    the local cache).

    A checkpoint whose processor bounds the pixels lower shrinks the image and spends fewer tokens, and Qwen3-VL's
    32-pixel tokens make it 676 where Qwen2.5-VL's 28-pixel ones make it 900; a hub id not cached yet is taken to be
    Qwen2.5-VL's (:data:`IMAGE_TOKENS`).
    """
    path = Path(model_path).expanduser()
    # Hub checkpoints carry preprocessor_config.json; transformers >= 5 saves processor_config.json.
    names = ("preprocessor_config.json", "processor_config.json")
    if not path.is_dir() and _HUB_ID.match(model_path):
        cached = next((found for name in names if (found := _cached(model_path, name)) is not None), None)
        path = path if cached is None else cached.parent
    if not any((path / name).is_file() for name in names):
        return IMAGE_TOKENS
    import numpy as np
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(path)
    grid = processor(images=[np.zeros((MODEL_SIZE, MODEL_SIZE, 3), np.uint8)], return_tensors="np")["image_grid_thw"]
    return int(np.prod(grid[0])) // int(processor.merge_size) ** 2


def workflow_response_tokens(steps: int, image: int = IMAGE_TOKENS) -> int:
    """The response budget of a workflow row: its grounding answer, then ``steps`` overlay turns with their answers."""
    return ANSWER_TOKENS + steps * (image + OVERLAY_TEXT_TOKENS + ANSWER_TOKENS)


@_never_raises
def check_workflow_budget(config: DictConfig) -> list[str]:
    """The workflow loop spends one response budget on every answer and every overlay turn (image included)."""
    files = list(_workflow_files(config))
    if not files:
        return []
    steps = OmegaConf.select(config, "veteran.workflow.max_steps")
    if steps is None:  # a config composed without the veteran block: the loop runs with the schema's default
        steps = schemas()["veteran"]().workflow.max_steps
    steps = int(steps)
    budget = int(config.data.max_response_length)
    image = image_tokens(str(config.actor_rollout_ref.model.path))
    need = workflow_response_tokens(steps, image)
    if budget >= need:
        return []
    step = workflow_response_tokens(1, image) - ANSWER_TOKENS
    fits = max(0, (budget - ANSWER_TOKENS) // step)
    prompt = int(config.data.max_prompt_length)
    micros = _micro_batches_for(config, prompt + budget, prompt + need)
    memory = f" (micro-batches of no more tokens, down to one sequence: {prompt + budget} -> {prompt + need} each)"
    return [
        f"data.max_response_length={budget} cannot hold veteran.workflow.max_steps={steps} refinement steps of the "
        f"{WORKFLOW_AGENT} rows in {files[0]} (~{ANSWER_TOKENS} tokens for the grounding answer, then ~{step} per "
        f"step: {image} image + ~{OVERLAY_TEXT_TOKENS} prompt tokens + ~{ANSWER_TOKENS} for the answer): "
        f"set {' '.join([f'data.max_response_length={need}', *micros])}{memory if micros else ''}, "
        f"or veteran.workflow.max_steps={fits}"
    ]


def _micro_batches_for(config: DictConfig, length: int, longer: int) -> list[str]:
    """Micro-batch sizes that hold no more tokens at ``longer`` tokens a sequence than the config's at ``length``, or
    one sequence where even that holds more.

    Without remove-padding verl pads each micro-batch to its longest sequence, and the update's activations grow with
    its tokens, fp32 logits over the 152k vocabulary foremost (1.6 GB a 2,600-token sequence): the memory the
    layouts were sized for holds only while the tokens per micro-batch stay.
    """
    layout = _Layout.of(config)
    sizes = [("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", layout.update_micro), *layout.infer_micros]
    overrides = []
    for key, micro in sizes:
        if not micro:  # None: dynamic batch size, which counts tokens itself
            continue
        smaller = max(1, micro * length // longer)
        if smaller < micro:
            overrides.append(f"{key}={smaller}")
    return overrides


def _resume_folder(config: DictConfig) -> Path | None:
    """The ``global_step_*`` folder the run loads (verl's ``_load_checkpoint`` after the trainer's tracker repair)."""
    mode = config.trainer.get("resume_mode", "auto")
    if mode == "resume_path":
        return Path(str(config.trainer.resume_from_path)).expanduser()
    if mode != "auto":
        return None
    root = Path(str(config.trainer.default_local_dir)).expanduser()
    step = resume_step(root)
    return None if step is None else step_folder(root, step)


@_never_raises
def check_resume(config: DictConfig) -> list[str]:
    """FSDP shards are named by world size, so a checkpoint loads only into the layout that saved it."""
    folder = _resume_folder(config)
    if folder is None or not (folder / "actor").is_dir():
        return []
    saved = {int(match[1]) for file in (folder / "actor").iterdir() if (match := _SHARD.match(file.name))}
    world = _verl_gpus(config)
    if not saved or saved == {world}:
        return []
    return [
        f"{folder} was saved by {max(saved)} GPUs and this run has {world}: resume with trainer.n_gpus_per_node x "
        "trainer.nnodes as saved, or start afresh with trainer.resume_mode=disable or a new "
        "trainer.default_local_dir (e.g. trainer.experiment_name=...)"
    ]


@_never_raises
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


@_never_raises
def check_scripted_answers(config: DictConfig) -> list[str]:
    """The CPU rollout's scripted answers (recipe/cpu/rollout.py) make a random tiny model's rewards vary; a real
    run must train on its policy's own answers only."""
    hf_cpu = OmegaConf.select(config, "actor_rollout_ref.rollout.engine_kwargs.hf_cpu", default=None) or {}
    scripted = hf_cpu.get("scripted_every", 0)
    if not scripted or not _on_gpu(config):
        return []
    return [
        f"actor_rollout_ref.rollout.engine_kwargs.hf_cpu.scripted_every={scripted} mixes scripted answers into "
        "the rollouts, which only the CPU smoke run may do: set "
        "actor_rollout_ref.rollout.engine_kwargs.hf_cpu.scripted_every=0"
    ]


@_never_raises
def check_gallery(config: DictConfig) -> list[str]:
    """``samrl.gallery`` converts to :class:`recipe.common.gallery.GalleryConfig` (known keys, sane values)."""
    try:
        to_dataclass(OmegaConf.select(config, "samrl.gallery", default=None), GalleryConfig)
    except (ValueError, OmegaConfBaseException) as err:
        return [f"samrl.gallery: {str(err).splitlines()[0]}"]
    return []


@_never_raises
def check_gpus(config: DictConfig, available: int) -> list[str]:
    """verl's ``n_gpus_per_node x nnodes`` plus the SAM2 pool's GPUs must fit in ``available``.

    The message names a layout that fits: the GPUs per node left beside SAM2 and, where the batch no longer divides
    among them, the nearest batch size that does.
    """
    pool = server_config(config.reward_server).pool
    verl_gpus = _verl_gpus(config)
    sam_gpus = pool.num_actors * pool.gpus_per_actor
    if verl_gpus + sam_gpus <= available:
        return []
    head = (
        f"{verl_gpus} GPUs for verl (trainer.n_gpus_per_node x trainer.nnodes) + {sam_gpus:g} for SAM2 "
        f"(reward_server.pool.num_actors x gpus_per_actor) > {available} available"
    )
    nnodes, replica = int(config.trainer.nnodes), _replica_gpus(config)
    per_node = (available - math.ceil(sam_gpus)) // nnodes  # a GPU SAM2 holds in part is no whole GPU for verl
    # Whole rollout replicas only: verl leaves the GPUs past the last whole one idle.
    per_node = next((count for count in range(per_node, 0, -1) if count * nnodes % replica == 0), 0)
    if per_node < 1:
        return [
            f"{head}: no room is left for one rollout replica of {replica} GPU{'s' * (replica > 1)} beside SAM2; lower "
            "reward_server.pool.num_actors or gpus_per_actor"
        ]
    layout = replace(_Layout.of(config), world=per_node * nnodes)
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


@_never_raises
def check_cpus(config: DictConfig) -> list[str]:
    """A local Ray must hold every CPU the run reserves, or a placement group waits forever without a word."""
    if not _on_gpu(config):
        return []
    pool = server_config(config.reward_server).pool
    verl, sam, tq = CPUS_PER_VERL_GPU * _verl_gpus(config), pool.num_actors * pool.cpus_per_actor, _tq_cpus(config)
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


@_never_raises
def check_pool_devices(config: DictConfig, health: list[dict[str, Any]]) -> list[str]:
    """After the SAM2 pool started: in a CUDA run, an ``auto`` engine that chose the CPU has no usable GPU.

    Args:
        config: The training config.
        health: Every actor's ``health()`` (``name`` and ``device``).
    """
    engine = server_config(config.reward_server).engine
    if not _on_gpu(config) or engine.device != "auto":
        return []
    on_cpu = [str(actor["name"]) for actor in health if str(actor.get("device", "")).startswith("cpu")]
    if not on_cpu:
        return []
    return [
        f"SAM2 actors {', '.join(on_cpu)} run on the CPU in a CUDA run (no GPU assigned, or torch cannot use it): "
        "give the pool GPUs (reward_server.pool.gpus_per_actor=1) and check the driver, or set "
        "reward_server.engine.device=cpu to accept it"
    ]


def _absolute(path: str) -> str:
    if "://" in path:  # hdfs:// and other remote locations verl copies itself
        return path
    return str(Path(path).expanduser().resolve())


def absolute_paths(config: DictConfig) -> None:
    """Makes the run's relative paths absolute against the driver's working directory, in place.

    verl's TaskRunner reads data files and writes checkpoints relative to its own working directory, which on a
    cluster is another machine's. Hub ids (the model path, a SAM2 checkpoint id) are left as they are.
    """
    for key in ("data.train_files", "data.val_files"):
        value = OmegaConf.select(config, key)
        if value is None:
            continue
        files = _files(value)
        absolute = [_absolute(file) for file in files]
        if absolute != files:
            OmegaConf.update(config, key, absolute if isinstance(value, ListConfig) else absolute[0], merge=False)
    for key in ("samrl.output_dir", "trainer.default_local_dir"):
        value = OmegaConf.select(config, key)
        if value is not None and _absolute(str(value)) != str(value):
            OmegaConf.update(config, key, _absolute(str(value)), merge=False)
    for key in ("actor_rollout_ref.model.path", "reward_server.engine.checkpoint"):
        value = OmegaConf.select(config, key)
        if value is not None and Path(str(value)).expanduser().exists():
            OmegaConf.update(config, key, _absolute(str(value)), merge=False)


HOST_CHECKS: list[Callable[[DictConfig], list[str]]] = [
    check_attention,
    check_driver,
    check_compiler,
    check_shared_memory,
    check_locked_memory,
]
"""Checks of the machine the work runs on: this one when the run starts its own Ray, each GPU node of a cluster it
joins otherwise (``recipe.common.launcher.check_gpu_nodes``)."""
CHECKS: list[Callable[[DictConfig], list[str]]] = [
    check_model,
    check_sam_checkpoint,
    check_datasets,
    check_batch_sizes,
    check_workflow_budget,
    check_resume,
    check_sam_placement,
    check_scripted_answers,
    check_gallery,
]


def host_checks(config: DictConfig) -> list[str]:
    """The problems :data:`HOST_CHECKS` find on the machine that calls this."""
    return [error for check in HOST_CHECKS for error in check(config)]


def preflight(config: DictConfig, available_gpus: int | None = None, host: bool = True) -> list[str]:
    """All problems found, one line each.

    Args:
        config: The composed training config.
        available_gpus: GPUs of the machine when the run starts its own Ray there; None when it joins a cluster,
            whose resources :func:`check_gpus` checks once connected. A CPU run (``trainer.device=cpu``) skips the
            GPU and CPU counts: its GPUs are Ray's virtual ones.
        host: Whether the work runs on this machine, so that :data:`HOST_CHECKS` apply to it; False when the run
            joins a cluster, whose GPU nodes run them once connected.
    """
    errors = [error for check in CHECKS for error in check(config)]
    if host:
        errors += host_checks(config)
    if available_gpus is not None and _on_gpu(config):
        errors += check_gpus(config, available_gpus) + check_cpus(config)
    return errors
