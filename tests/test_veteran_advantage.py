"""grpo_batch_std against a float64 reference, and how it relates to verl's reinforce_plus_plus_baseline."""

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import get_adv_estimator_fn


def batch(seed: int, groups: int = 4, rollouts: int = 8, length: int = 12, equal_lengths: bool = False):
    generator = np.random.default_rng(seed)
    rewards = generator.choice([0.0, 1.0, 2.0, 3.5, 6.0], size=groups * rollouts) + generator.normal(
        0, 0.1, groups * rollouts
    )
    lengths = (
        np.full(groups * rollouts, length) if equal_lengths else generator.integers(2, length + 1, groups * rollouts)
    )
    mask = torch.zeros(groups * rollouts, length)
    token_rewards = torch.zeros(groups * rollouts, length, dtype=torch.float64)
    for row, (reward, size) in enumerate(zip(rewards, lengths, strict=True)):
        mask[row, :size] = 1
        token_rewards[row, size - 1] = reward  # outcome reward on the last token
    index = np.repeat([f"uid{g}" for g in range(groups)], rollouts)
    return token_rewards, mask, index, rewards


def reference(rewards: np.ndarray, index: np.ndarray, epsilon: float = 1e-6) -> np.ndarray:
    centred = rewards.astype(np.float64).copy()
    for group in set(index):
        centred[index == group] -= rewards[index == group].mean()
    return centred / (centred.std(ddof=1) + epsilon)


@pytest.mark.parametrize("seed", range(10))
def test_equals_the_float64_reference(seed):
    token_rewards, mask, index, rewards = batch(seed)
    advantages, returns = get_adv_estimator_fn("grpo_batch_std")(
        token_level_rewards=token_rewards, response_mask=mask, index=index
    )
    expected = reference(rewards, index)
    for row in range(len(rewards)):
        valid = mask[row].bool()
        assert torch.allclose(advantages[row][valid], torch.tensor(expected[row]), rtol=1e-10)
        assert (advantages[row][~valid] == 0).all()
    assert torch.equal(advantages, returns)


def test_differs_from_grpo_by_one_scale_for_the_whole_batch():
    token_rewards, mask, index, _ = batch(0)
    ours = get_adv_estimator_fn("grpo_batch_std")(token_level_rewards=token_rewards, response_mask=mask, index=index)[0]
    grpo = get_adv_estimator_fn("grpo")(token_level_rewards=token_rewards, response_mask=mask, index=index)[0]
    ratios = {round(float(ours[r, 0] / grpo[r, 0]), 6) for r in range(len(index)) if abs(float(grpo[r, 0])) > 1e-3}
    assert len(ratios) > 1  # GRPO scales each group by its own std


def test_relation_to_verls_reinforce_plus_plus_baseline():
    """With equal lengths, verl's token-level whitening is the same centring, scaled by its token-count Bessel factor;
    with unequal lengths, long responses weigh more in verl's statistics and the two differ."""
    token_rewards, mask, index, _ = batch(1, equal_lengths=True)
    ours = get_adv_estimator_fn("grpo_batch_std")(token_level_rewards=token_rewards, response_mask=mask, index=index)[0]
    rfpp = get_adv_estimator_fn("reinforce_plus_plus_baseline")(
        token_level_rewards=token_rewards, response_mask=mask, index=index
    )[0]
    responses, length = mask.shape
    bessel = np.sqrt((responses * length - 1) / (length * (responses - 1)))
    assert torch.allclose(rfpp[:, 0].double(), ours[:, 0].double() * bessel, rtol=1e-4, atol=1e-5)
    token_rewards, mask, index, _ = batch(1)
    ours = get_adv_estimator_fn("grpo_batch_std")(token_level_rewards=token_rewards, response_mask=mask, index=index)[0]
    rfpp = get_adv_estimator_fn("reinforce_plus_plus_baseline")(
        token_level_rewards=token_rewards, response_mask=mask, index=index
    )[0]
    assert not torch.allclose(rfpp[:, 0].double(), ours[:, 0].double() * bessel, rtol=1e-3)
