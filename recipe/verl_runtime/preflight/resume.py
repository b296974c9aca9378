"""Resume: a checkpoint loads only into the layout that saved it."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

from recipe.verl_runtime.checkpoints import resume_step, step_folder
from recipe.verl_runtime.preflight.base import never_raises, verl_gpus

_SHARD = re.compile(r"^model_world_size_(\d+)_rank_\d+\.pt$")


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


@never_raises
def check_resume(config: DictConfig) -> list[str]:
    """FSDP shards are named by world size, so a checkpoint loads only into the layout that saved it."""
    folder = _resume_folder(config)
    if folder is None or not (folder / "actor").is_dir():
        return []
    saved = {int(match[1]) for file in (folder / "actor").iterdir() if (match := _SHARD.match(file.name))}
    world = verl_gpus(config)
    if not saved or saved == {world}:
        return []
    return [
        f"{folder} was saved by {max(saved)} GPUs and this run has {world}: resume with trainer.n_gpus_per_node x "
        "trainer.nnodes as saved, or start afresh with trainer.resume_mode=disable or a new "
        "trainer.default_local_dir (e.g. trainer.experiment_name=...)"
    ]
