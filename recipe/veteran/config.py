"""The ``veteran`` block of the SAM-Veteran recipe, and the one place its defaults live (the paper's values).

``conf/veteran.yaml`` composes over :class:`VeteranConfig` (registered by ``recipe.verl_runtime.run_config``), so
the YAML holds only what a preset changes; every consumer converts the block with :func:`veteran_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from recipe.task.dataset_rows import AUXILIARY, GROUNDING, MASK_COMPREHENSION, TASK_AGENTS
from recipe.task.episodes import WorkflowConfig
from recipe.veteran.reward_formulas import VeteranRewardConfig
from reward_server.config import to_dataclass


@dataclass
class DynamicSamplingConfig:
    """``veteran.dynamic_sampling``: which tasks use which algorithm, and its parameters (section 3.3, A.2)."""

    enable: bool = True
    stop_iter: int = 300  # counted from verl's global step, so a resumed run keeps the count
    max_attempts: int = 3
    max_errors: int = 2
    box_iou_threshold: float = 0.8
    # None: Algorithm 2's quotas scaled to the group size (sampling.scaled_point_quotas); a dict sets them outright.
    point_quotas: dict[str, int] | None = None
    tasks: dict[str, str] = field(
        default_factory=lambda: {
            TASK_AGENTS[GROUNDING]: "box",
            TASK_AGENTS[MASK_COMPREHENSION]: "point",
            TASK_AGENTS[AUXILIARY]: "point",
        }
    )


@dataclass
class VeteranConfig:
    """``veteran``: the rewards, the on-policy workflow and dynamic sampling."""

    reward: VeteranRewardConfig = field(default_factory=VeteranRewardConfig)
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)


def veteran_config(config: Any) -> VeteranConfig:
    """The ``veteran`` block of a trainer config as :class:`VeteranConfig` (the paper's values where absent).

    Raises:
        ValueError: For an invalid value (e.g. an unknown ``iou_gain``).
    """
    return to_dataclass(OmegaConf.select(config, "veteran", default=None), VeteranConfig)
