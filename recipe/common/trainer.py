"""verl's sync V1 trainer, also logging the reward components of every training step.

verl logs ``reward_extra_info`` (IoU, format rewards, failure categories) only at validation; this trainer adds
each numeric component's batch mean as ``reward/<name>/mean`` and each failure category's share as
``reward/failure/<category>`` to every step's metrics, so they move on the console and in TensorBoard.
"""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import transfer_queue as tq
from omegaconf import DictConfig, open_dict
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

TRAINER_MODE = "sync_reward_metrics"


def reward_component_metrics(extra_fields: Iterable[Any]) -> dict[str, float]:
    """Means of the numeric ``reward_extra_info`` values and shares of each ``failure`` category.

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
    failures = Counter(str(info.get("failure", "")) for info in infos if "failure" in info)
    total = sum(failures.values())
    for category, count in failures.items():
        metrics[f"reward/failure/{category or 'none'}"] = count / total
    return metrics


@register_trainer(TRAINER_MODE)
class RewardMetricsTrainer(PPOTrainerSync):
    """``trainer.v1.trainer_mode=sync_reward_metrics``: the sync trainer plus per-step reward components."""

    def __init__(self, config: DictConfig):
        # verl branches on trainer_mode == "sync"; this is that trainer with extra metrics, so it runs as "sync".
        with open_dict(config):
            config.trainer.v1.trainer_mode = "sync"
        super().__init__(config=config)

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        keys = [key for key, tag in zip(batch.keys, batch.tags, strict=True) if not tag.get("is_padding", False)]
        if keys:
            data = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
            metrics.update(reward_component_metrics(data.pop("extra_fields").tolist()))
