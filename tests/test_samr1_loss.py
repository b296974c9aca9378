"""SAM-R1's eq. (4) objective, registered as "samr1", against a float64 reference of the paper's formula."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.utils.config import omega_conf_to_dataclass


def actor_config(clip_low: float, clip_high: float, batch_num_tokens: int, dp_size: int = 1, clip_ratio_c: float = 3.0):
    config = omega_conf_to_dataclass(
        OmegaConf.create(
            {
                "_target_": "verl.workers.config.FSDPActorConfig",
                "strategy": "fsdp",
                "ppo_mini_batch_size": 4,
                "ppo_micro_batch_size_per_gpu": 1,
                "clip_ratio_low": clip_low,
                "clip_ratio_high": clip_high,
                "clip_ratio_c": clip_ratio_c,
                "rollout_n": 1,
            }
        )
    )
    config.global_batch_info.update(
        dp_size=dp_size, batch_num_tokens=batch_num_tokens, global_batch_size=None, loss_scale_factor=None
    )
    return config


def eq4_reference(old_log_prob, log_prob, advantages, mask, eps_low, eps_high) -> float:
    """-(1 / sum |o_i|) * sum_i sum_t min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), in float64."""
    old, new, adv, m = (np.asarray(t, np.float64) for t in (old_log_prob, log_prob, advantages, mask))
    ratio = np.exp(new - old)
    objective = np.minimum(ratio * adv, np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv)
    return float(-(objective * m).sum() / m.sum())


def random_batch(seed: int, batch: int = 6, length: int = 9, spread: float = 1.5):
    generator = torch.Generator().manual_seed(seed)
    old = torch.randn(batch, length, generator=generator, dtype=torch.float64) - 2
    new = old + spread * torch.randn(batch, length, generator=generator, dtype=torch.float64)  # ratios e^-4 .. e^4
    advantages = torch.randn(batch, 1, generator=generator, dtype=torch.float64).expand(batch, length).clone()
    advantages[0] = -abs(advantages[0]) - 1  # a strongly negative advantage ...
    new[0, :3] = old[0, :3] + 3.0  # ... on ratios ~20, far above 1 + eps_high: dual clip would bound these
    mask = torch.ones(batch, length, dtype=torch.bool)
    for row in range(batch):
        mask[row, int(torch.randint(3, length + 1, (1,), generator=generator)) :] = False
    return old, new, advantages, mask


@pytest.mark.parametrize(("eps_low", "eps_high"), [(0.2, 0.3), (0.2, 0.2), (0.1, 0.5)])
@pytest.mark.parametrize("seed", range(5))
def test_samr1_loss_equals_eq4_in_float64(seed, eps_low, eps_high):
    old, new, advantages, mask = random_batch(seed)
    config = actor_config(eps_low, eps_high, batch_num_tokens=int(mask.sum()))
    loss, metrics = get_policy_loss_fn("samr1")(
        old_log_prob=old,
        log_prob=new,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode="token-mean",
        config=config,
    )
    assert loss.item() == pytest.approx(eq4_reference(old, new, advantages, mask, eps_low, eps_high), rel=1e-12)
    # The clip binds where the clipped term is the smaller objective: r A > clip(r) A.
    ratio, adv, m = np.exp((new - old).numpy()), advantages.numpy(), mask.numpy()
    binds = ratio * adv > np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv
    assert metrics["actor/pg_clipfrac"] == pytest.approx(binds[m].mean(), abs=1e-6)  # float32 masked means
    assert metrics["actor/pg_clipfrac"] > 0.0


def test_it_is_verls_vanilla_loss_with_dual_clipping_switched_off():
    """clip_ratio_c = inf disables vanilla's dual clip: loss and verl's metric names agree with it."""
    old, new, advantages, mask = random_batch(2)
    advantages[1] = 0.0  # GRPO's all-equal groups; vanilla's unused branch is -0 * inf there
    kwargs = dict(old_log_prob=old, log_prob=new, advantages=advantages, response_mask=mask, loss_agg_mode="token-mean")
    config = actor_config(0.2, 0.3, batch_num_tokens=int(mask.sum()), clip_ratio_c=float("inf"))
    ours, our_metrics = get_policy_loss_fn("samr1")(**kwargs, config=config)
    vanilla, vanilla_metrics = get_policy_loss_fn("vanilla")(**kwargs, config=config)
    assert ours.item() == pytest.approx(vanilla.item(), rel=1e-12)
    assert our_metrics.keys() == vanilla_metrics.keys()
    for key, value in vanilla_metrics.items():
        assert our_metrics[key] == pytest.approx(value, abs=1e-6), key


def test_on_policy_the_ratio_is_one_and_nothing_is_clipped():
    """One update per step: old log-probs are the current ones, so no clip bound can bind."""
    old, _, advantages, mask = random_batch(3)
    config = actor_config(0.2, 0.3, batch_num_tokens=int(mask.sum()))
    loss, metrics = get_policy_loss_fn("samr1")(
        old_log_prob=old, log_prob=old.clone(), advantages=advantages, response_mask=mask, config=config
    )
    assert metrics["actor/pg_clipfrac"] == 0.0 and metrics["actor/ppo_kl"] == 0.0
    assert loss.item() == pytest.approx(-float((advantages * mask).sum() / mask.sum()), rel=1e-12)


def test_no_dual_clip_unlike_verls_vanilla_loss():
    old, new, advantages, mask = random_batch(0)
    config = actor_config(0.2, 0.3, batch_num_tokens=int(mask.sum()))
    kwargs = dict(old_log_prob=old, log_prob=new, advantages=advantages, response_mask=mask, loss_agg_mode="token-mean")
    ours, _ = get_policy_loss_fn("samr1")(**kwargs, config=config)
    vanilla, _ = get_policy_loss_fn("vanilla")(**kwargs, config=config)
    assert ours.item() > vanilla.item()  # vanilla caps the large-ratio, negative-advantage tokens at 3 * |A|


def test_token_mean_normalises_by_the_global_token_count():
    """Two data-parallel halves with verl's global_batch_info sum to the loss of the whole batch."""
    old, new, advantages, mask = random_batch(1)
    total_tokens = int(mask.sum())
    whole, _ = get_policy_loss_fn("samr1")(
        old_log_prob=old,
        log_prob=new,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode="token-mean",
        config=actor_config(0.2, 0.3, total_tokens),
    )
    halves = []
    for rows in (slice(0, 3), slice(3, 6)):
        part, _ = get_policy_loss_fn("samr1")(
            old_log_prob=old[rows],
            log_prob=new[rows],
            advantages=advantages[rows],
            response_mask=mask[rows],
            loss_agg_mode="token-mean",
            config=actor_config(0.2, 0.3, total_tokens, dp_size=2),
        )
        halves.append(part.item())
    assert np.mean(halves) == pytest.approx(whole.item(), rel=1e-12)  # DP gradients are averaged over ranks
