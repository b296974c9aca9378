"""verl's sync V1 trainer, also logging the reward components of every training step.

verl logs ``reward_extra_info`` (IoU, format rewards, failure categories) only at validation; this trainer adds
each numeric component's batch mean as ``reward/<name>/mean``, each failure category's share as
``reward/failure/<category>`` and each task's share as ``reward/task/<task>`` (SAM-Veteran's mix) to every step's
metrics, so they move on the console and in TensorBoard. It also logs the SAM2 pool's work in the step
(``sam/requests``, ``sam/encodes``, ``sam/cache_hits``, ``sam/served_s``, ``sam/restarts``; see
:mod:`recipe.verl_runtime.pool_meter`); an unreachable pool is logged and counted, never a failed step. Every
``samrl.gallery.every_n_steps`` steps it draws a gallery of rollouts (:mod:`recipe.verl_runtime.gallery`); a rollout
that cannot be drawn is logged and counted (``gallery/errors``), never a failed step. Before verl resumes, a
checkpoint tracker that a killed job left unusable is repaired (:mod:`recipe.verl_runtime.checkpoints`).
"""

from __future__ import annotations

import logging
import numbers
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf, open_dict
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from recipe.task.dataset_rows import Row
from recipe.task.prompts import first_image
from recipe.verl_runtime.checkpoints import repair_tracker
from recipe.verl_runtime.gallery import GalleryConfig, choose_keys, render_rollout, rollout_from_fields, write_gallery
from recipe.verl_runtime.pool_meter import PoolMeter
from recipe.verl_runtime.registration import trainer
from recipe.verl_runtime.rollout_check import RolloutCheckConfig, mismatch
from reward_server.config import to_dataclass

logger = logging.getLogger(__name__)

TRAINER_MODE = "sync_reward_metrics"


GALLERY_FIELDS = ("raw_prompt", Row.reward_model.name, Row.extra_info.name, "responses", "extra_fields")
"""The TransferQueue fields a gallery draws from (verl stores each row's fields with its rollouts)."""

CATEGORIES = ("failure", "task")
"""``reward_extra_info`` keys whose string values are reported as shares of the batch."""


def reward_component_metrics(extra_fields: Iterable[Any]) -> dict[str, float]:
    """Means of the numeric ``reward_extra_info`` values and shares of each value of the :data:`CATEGORIES` keys.

    Args:
        extra_fields: Each trajectory's ``extra_fields`` (dicts holding ``reward_extra_info``; others ignored).
    """
    infos = [fields.get("reward_extra_info") or {} for fields in extra_fields if isinstance(fields, dict)]
    if not infos:
        return {}
    metrics = {}
    for key in sorted({key for info in infos for key in info}):
        values = [info[key] for info in infos if isinstance(info.get(key), numbers.Real)]
        if values:
            metrics[f"reward/{key}/mean"] = float(np.mean(values))
    for key in CATEGORIES:
        counts = Counter(str(info[key]) for info in infos if key in info)
        total = sum(counts.values())
        for value, count in counts.items():
            metrics[f"reward/{key}/{value or 'none'}"] = count / total
    return metrics


@trainer(TRAINER_MODE)
class RewardMetricsTrainer(PPOTrainerSync):
    """``trainer.v1.trainer_mode=sync_reward_metrics``: the sync trainer plus per-step reward components."""

    def __init__(self, config: DictConfig):
        # verl branches on trainer_mode == "sync"; this is that trainer with extra metrics, so it runs as "sync".
        with open_dict(config):
            config.trainer.v1.trainer_mode = "sync"
        super().__init__(config=config)
        self._pool_meter: PoolMeter | None = None
        self._pool_unreachable = 0
        self._gallery = to_dataclass(OmegaConf.select(config, "samrl.gallery", default=None), GalleryConfig)
        self._gallery_errors = 0
        self._rollout_check = to_dataclass(OmegaConf.select(config, "samrl.rollout_check"), RolloutCheckConfig)
        self._mismatch_steps = 0

    def _load_checkpoint(self):
        # verl reads only the tracker, which a kill can leave empty or naming an unfinished folder.
        if self.config.trainer.resume_mode == "auto":
            repaired = repair_tracker(Path(self.config.trainer.default_local_dir).absolute())
            if repaired:
                logger.warning("checkpoint tracker: %s", repaired)
        super()._load_checkpoint()

    def init(self):
        super().init()
        # The baseline: an attached pool may have served other runs before this one.
        self._pool_meter = PoolMeter(self._pool_health())

    def _pool_health(self) -> list[dict] | None:
        from reward_server.config import server_config
        from reward_server.pool import connect_pool, pool_health

        try:
            return pool_health(connect_pool(server_config(self.config.reward_server).pool))
        except Exception as err:  # the step's own results stand; the counter shows the pool was not reachable
            self._pool_unreachable += 1
            logger.warning("SAM2 pool metrics unavailable: %r", err)
            return None

    def _pool_metrics(self) -> dict[str, float]:
        health = self._pool_health()
        if health is None:
            return {"sam/unreachable": float(self._pool_unreachable)}
        if self._pool_meter is None:
            self._pool_meter = PoolMeter()
        return self._pool_meter.step(health)

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        keys = [key for key, tag in zip(batch.keys, batch.tags, strict=True) if not tag.get("is_padding", False)]
        if keys:
            data = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
            metrics.update(reward_component_metrics(data.pop("extra_fields").tolist()))
        metrics.update(self._pool_metrics())
        metrics.update(self._check_rollout(metrics, global_steps))
        if self._gallery.due(global_steps):
            metrics.update(self._draw_gallery(batch.partition_id, keys, global_steps))

    def _check_rollout(self, metrics: dict[str, float], step: int) -> dict[str, float]:
        """Warns when the step's rollout and actor disagree (:mod:`recipe.verl_runtime.rollout_check`); counts such
        steps."""
        reason = mismatch(metrics, self._rollout_check)
        if reason is not None:
            self._mismatch_steps += 1
            logger.warning("step %d: %s", step, reason)
        return {"training/rollout_mismatch_steps": float(self._mismatch_steps)}

    def _draw_gallery(self, partition_id: str, keys: list[str], step: int) -> dict[str, float]:
        """Draws the step's gallery to its HTML page and TensorBoard; every failure is logged and counted."""
        rollouts, panels = [], []
        try:
            chosen = choose_keys(keys, self._gallery.rollouts)
            data = tq.kv_batch_get(keys=chosen, partition_id=partition_id, select_fields=list(GALLERY_FIELDS))
            # Non-tensor fields come back as NonTensorStack (tolist) or as tensordict's LinkedList (a list).
            columns = {name: data[name] for name in GALLERY_FIELDS if name != "responses"}
            fields = {name: col.tolist() if hasattr(col, "tolist") else list(col) for name, col in columns.items()}
            responses = data["responses"].to_padded_tensor(padding=self.tokenizer.pad_token_id)
            for index, key in enumerate(chosen):
                try:
                    rollout = rollout_from_fields(
                        key,
                        first_image(fields["raw_prompt"][index]),
                        fields[Row.reward_model.name][index],
                        fields[Row.extra_info.name][index],
                        self.tokenizer.decode(responses[index], skip_special_tokens=True),
                        (fields["extra_fields"][index] or {}).get("reward_extra_info"),
                    )
                    panels.append(render_rollout(rollout, self._gallery.max_side))
                    rollouts.append(rollout)
                except Exception as err:  # one bad rollout costs its picture, not the gallery or the step
                    self._gallery_errors += 1
                    logger.warning("gallery: rollout %s not drawn: %r", key, err)
            write_gallery(self.config.samrl.output_dir, step, rollouts, panels, failed=len(chosen) - len(rollouts))
            tensorboard = getattr(getattr(self, "logger", None), "logger", {}).get("tensorboard")
            if tensorboard is not None:  # verl's Tracking adapter, when trainer.logger lists tensorboard
                for index, panel in enumerate(panels):
                    tensorboard.writer.add_image(f"gallery/{index}", np.asarray(panel), step, dataformats="HWC")
        except Exception as err:  # the step's results stand; the counter shows the gallery was lost
            self._gallery_errors += 1
            logger.warning("gallery of step %d not written: %r", step, err)
        return {"gallery/rollouts": float(len(panels)), "gallery/errors": float(self._gallery_errors)}
