"""``grpo_batch_std``: GRPO's group baseline with REINFORCE++'s global normalisation (SAM-Veteran, section 4.1).

``A_i = (r_i - mean of r over i's group) / (std over the whole batch of those centred rewards + eps)``: one scale
for the batch instead of GRPO's per-group standard deviation, so groups whose rollouts score alike are not blown
up to unit variance. Unlike verl's ``reinforce_plus_plus_baseline``, which whitens over tokens (longer responses
weigh more and the result is re-centred), every response counts once here.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from recipe.verl_runtime.registration import adv_estimator


@adv_estimator("grpo_batch_std")
def compute_grpo_batch_std_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config=None,
    **_,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outcome advantages, broadcast over each response's tokens.

    Args:
        token_level_rewards: ``(batch, response_length)``; a response's reward is its sum.
        response_mask: ``(batch, response_length)``.
        index: The group (prompt uid) of each response.
        epsilon: Added to the standard deviation.
        norm_adv_by_std_in_grpo: Divide by the batch standard deviation (False keeps the centred rewards).
        config: verl's algorithm config (``norm_adv_by_std_in_grpo`` is read from it when given).

    Returns:
        ``(advantages, returns)``, both the advantages, as verl's outcome estimators return them.
    """
    if config is not None:
        norm_adv_by_std_in_grpo = config.get("norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo)
    scores = token_level_rewards.sum(dim=-1)
    with torch.no_grad():
        members: dict[object, list[int]] = defaultdict(list)
        for row, group in enumerate(index):
            members[group].append(row)
        centred = scores.clone()
        for rows in members.values():
            # A group of one has no baseline to compare with, as in verl's GRPO.
            centred[rows] = scores[rows] - (scores[rows].mean() if len(rows) > 1 else 0.0)
        if norm_adv_by_std_in_grpo and len(scores) > 1:
            centred = centred / (centred.std() + epsilon)
        advantages = centred.unsqueeze(-1) * response_mask
    return advantages, advantages
