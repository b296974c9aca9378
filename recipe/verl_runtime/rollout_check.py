"""Whether the rollout sampled from the policy the actor trains: the step's ``training/rollout_probs_diff_*``.

verl compares each response token's probability under the rollout (vLLM, or the CPU backend) with the actor's
recomputed one (``actor_rollout_ref.rollout.calculate_log_probs``). A healthy run differs by numerics only; a stale
rollout (weights that never arrived), positions or inputs the two compute differently, or a wrong tokenisation give
differences near 1 on the tokens that matter, and GRPO then trains on another policy's samples. The trainer warns
once per such step and counts the steps (``training/rollout_mismatch_steps``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MAX_DIFF = "training/rollout_probs_diff_max"
MEAN_DIFF = "training/rollout_probs_diff_mean"


@dataclass
class RolloutCheckConfig:
    """``samrl.rollout_check``: the bounds past which a step's rollout and actor disagree.

    Attributes:
        max_probs_diff: Bound of the largest per-token probability difference of the step. fp32 CPU runs stay below
            1e-3 with weight sync; a rollout without it, or with the wrong positions, reaches 0.35 to 1 after one or
            two updates, depending on the machine (the learning check's control), so ``+smoke=cpu`` sets a tighter
            bound (``conf/smoke/cpu.yaml``). bf16 GPU runs have not been measured yet: set it from the first steps.
        mean_probs_diff: Bound of the mean per-token difference.
    """

    max_probs_diff: float = 0.5
    mean_probs_diff: float = 0.02

    def __post_init__(self):
        if not (0 < self.max_probs_diff <= 1 and 0 < self.mean_probs_diff <= 1):
            raise ValueError(f"samrl.rollout_check bounds must lie in (0, 1], got {self}")


def mismatch(metrics: Mapping[str, float], config: RolloutCheckConfig) -> str | None:
    """Why the step's rollout and actor disagree, or None (also when the step logged no comparison)."""
    largest, mean = metrics.get(MAX_DIFF), metrics.get(MEAN_DIFF)
    broken = []
    if largest is not None and largest > config.max_probs_diff:
        broken.append(f"max {largest:.3f} > {config.max_probs_diff}")
    if mean is not None and mean > config.mean_probs_diff:
        broken.append(f"mean {mean:.4f} > {config.mean_probs_diff}")
    if not broken:
        return None
    return (
        f"rollout and actor disagree on the step's token probabilities ({', '.join(broken)}): the rollout may sample "
        "from other weights or other inputs than the actor trains (docs/learning.md)"
    )
