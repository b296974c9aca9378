"""SAM-R1's policy objective, eq. (4): PPO's clipped ratio with asymmetric bounds, without dual clipping.

verl's ``vanilla`` loss adds dual clipping (a floor of ``clip_ratio_c * A`` for negative advantages); the paper's
objective has none, so ratios far above ``1 + clip_ratio_high`` with negative advantages keep their full gradient.
It equals ``vanilla`` with ``clip_ratio_c = inf`` (tests/test_samr1_loss.py checks both against each other and
against the formula), without the NaN that ``-A * inf`` leaves in vanilla's unused branch where ``A = 0``.

The clip bounds act only when the policy has moved since the rollout: with one update per step (the
``policy_updates=on_policy`` default) the ratio is 1 on every token and ``actor/pg_clipfrac`` is 0.
Token-level averaging and the k3 KL term come from verl itself: ``agg_loss`` with ``loss_agg_mode=token-mean`` and
the actor's KL loss (``use_kl_loss``, ``kl_loss_type=low_var_kl``).
"""

from __future__ import annotations

from typing import Any

import torch
from verl.trainer.ppo.core_algos import agg_loss
from verl.utils import torch_functional as verl_F

from recipe.verl_runtime.registration import policy_loss

LOG_RATIO_CLAMP = 20.0  # as verl's losses: exp() of larger log-ratios overflows


@policy_loss("samr1")
def compute_policy_loss_samr1(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)`` per token, aggregated by verl's ``agg_loss``.

    Args:
        old_log_prob: Log-probabilities under the rollout policy, ``(batch, response_length)``.
        log_prob: Log-probabilities under the current policy.
        advantages: Per-token advantages (GRPO broadcasts each response's advantage over its tokens).
        response_mask: Tokens that count.
        loss_agg_mode: verl's aggregation mode (``token-mean`` is the paper's token-level average).
        config: The actor config: ``clip_ratio_low`` / ``clip_ratio_high`` (falling back to ``clip_ratio``) and the
            ``global_batch_info`` that normalises across micro-batches and data-parallel ranks.
        rollout_is_weights: Optional rollout-correction weights, as verl's losses accept.

    Returns:
        The loss and verl's policy-gradient metrics.
    """
    clip_low = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
    clip_high = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
    log_ratio = torch.clamp(log_prob - old_log_prob, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    losses = torch.maximum(unclipped, clipped)
    if rollout_is_weights is not None:
        losses = losses * rollout_is_weights
    loss = agg_loss(loss_mat=losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **config.global_batch_info)
    # verl's own metric names, so a dashboard compares this loss with ``vanilla`` key for key. Without dual clipping
    # its bound never binds: pg_clipfrac_lower is 0, as verl's vanilla reports it with clip_ratio_c = inf.
    metrics = {
        "actor/pg_clipfrac": verl_F.masked_mean(torch.gt(clipped, unclipped).float(), response_mask).item(),
        "actor/ppo_kl": verl_F.masked_mean(-log_ratio, response_mask).item(),
        "actor/pg_clipfrac_lower": 0.0,
    }
    return loss, metrics
