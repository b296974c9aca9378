"""Files and paths: the model, the segmenter's checkpoint and the datasets exist, and paths the TaskRunner reads
are absolute."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, ListConfig, OmegaConf

from recipe.task.dataset_rows import MASK_COMPREHENSION, TASK_AGENTS, GroundTruth, RewardModel, Row
from recipe.verl_runtime.preflight.base import files_of, never_raises
from reward_server.config import BOX_MODEL, EngineConfig, server_config
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


HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    # Read now rather than from huggingface_hub.constants, which froze the environment when it was imported.
    return env_true("HF_HUB_OFFLINE") or env_true("TRANSFORMERS_OFFLINE")


def cached(repo_id: str, filename: str) -> Path | None:
    """``filename`` of hub repo ``repo_id`` in the local Hugging Face cache, without any network call."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def hub_errors(repo_id: str, filename: str, key: str) -> list[str]:
    """A hub id must be in the local cache before the run: downloaded once, not by every worker as it starts.

    Online, each worker process that loads it (every actor, rollout and SAM2 worker, on every node) would fetch it
    at start; on a node without network and without ``HF_HUB_OFFLINE`` each would wait out its retries instead.
    """
    if cached(repo_id, filename) is not None:
        return []
    where = "HF_HUB_OFFLINE is set and " if hub_offline() else ""
    return [
        f"{key}={repo_id} is a hub id and {where}the Hugging Face cache lacks it: run `hf download {repo_id}` once "
        f"before the run, where online and with the HF_HOME every node reads, or set {key}=/local/path"
    ]


@never_raises
def check_model(config: DictConfig) -> list[str]:
    path = str(config.actor_rollout_ref.model.path)
    if Path(path).expanduser().is_dir():
        if not (Path(path).expanduser() / "config.json").is_file():
            return [f"model {path} has no config.json"]
        return _coordinate_errors(path)
    if HUB_ID.match(path) and not path.startswith((".", "/", "~")):
        return hub_errors(path, "config.json", "actor_rollout_ref.model.path") or _coordinate_errors(path)
    return [f"model {path} not found: set actor_rollout_ref.model.path=/path/to/Qwen2.5-VL-7B-Instruct"]


def _coordinate_errors(path: str) -> list[str]:
    """The rewards read a model's answers in its family's coordinate convention: a family with none known would
    fail in every reward worker at its first answer."""
    from recipe.task.coordinates import MODEL_TYPES

    family = checkpoint_model_type(path)
    if family is None or family in MODEL_TYPES:
        return []
    return [
        f"model {path} is a {family!r} model, whose coordinate convention is not known (known: "
        f"{sorted(MODEL_TYPES)}); add it to recipe/task/coordinates.py"
    ]


def checkpoint_model_type(path: str) -> str | None:
    """``model_type`` from the checkpoint's ``config.json``, in its directory or the hub cache; None when unread."""
    local = Path(path).expanduser()
    if local.is_dir():
        config_file = local / "config.json"
    elif HUB_ID.match(path):
        config_file = cached(path, "config.json")
    else:
        return None
    if config_file is None or not config_file.is_file():
        return None
    return json.loads(config_file.read_text()).get("model_type")


@never_raises
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
        return hub_errors(engine.checkpoint, filename, "reward_server.engine.checkpoint")
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
    if HUB_ID.match(engine.checkpoint):
        return hub_errors(engine.checkpoint, "config.json", "reward_server.engine.checkpoint")
    return [f"SAM 3 checkpoint {engine.checkpoint} not found: set reward_server.engine.checkpoint to its directory"]


@never_raises
def check_datasets(config: DictConfig) -> list[str]:
    errors, train_rows, truth_fields = [], 0, {}
    for key in ("train_files", "val_files"):
        for file in files_of(config.data[key]):
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
                    truth_fields[file] = ground_truth_fields(schema)
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


def ground_truth_fields(schema: pa.Schema) -> set[str]:
    reward_model = schema.field(Row.reward_model.name).type
    if not pa.types.is_struct(reward_model) or reward_model.get_field_index(RewardModel.ground_truth.name) < 0:
        return set()
    truth = reward_model.field(RewardModel.ground_truth.name).type
    return {truth.field(i).name for i in range(truth.num_fields)} if pa.types.is_struct(truth) else set()


def _stale_mask_comprehension(path: Path, schema: pa.Schema, key: str) -> list[str]:
    """Mask-comprehension rows prepared before data_prep stored the shown mask's logits cannot be refined."""
    if GroundTruth.init_logits.name in ground_truth_fields(schema):
        return []
    column = Row.agent_name.name
    agents = pq.read_table(path, columns=[column]).column(column).unique().to_pylist()
    if TASK_AGENTS[MASK_COMPREHENSION] not in agents:
        return []
    return [
        f"{key}: {path} holds mask-comprehension rows without init_logits; rerun `make data` and `make data-veteran`"
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
        files = files_of(value)
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
