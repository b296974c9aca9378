"""The rollout check's bounds (samrl.rollout_check) against verl's metric names."""

import pytest
from verl.utils.debug.metrics import calculate_debug_metrics

from recipe.verl_runtime.rollout_check import MAX_DIFF, MEAN_DIFF, RolloutCheckConfig, mismatch


def test_the_metric_names_are_verls():
    """verl's own debug metrics, computed on a batch whose rollout and actor differ on one token."""
    import torch
    from verl import DataProto

    actor = torch.log(torch.tensor([[0.5, 0.9, 0.2]]))
    rollout = torch.log(torch.tensor([[0.5, 0.1, 0.2]]))
    batch = DataProto.from_dict(
        {
            "old_log_probs": actor,
            "rollout_log_probs": rollout,
            "response_mask": torch.ones(1, 3),
            "responses": torch.zeros(1, 3, dtype=torch.long),
            "attention_mask": torch.ones(1, 6),
        }
    )
    metrics = calculate_debug_metrics(batch)
    assert metrics[MAX_DIFF] == pytest.approx(0.8)
    assert metrics[MEAN_DIFF] == pytest.approx(0.8 / 3)
    reason = mismatch(metrics, RolloutCheckConfig())
    assert "max 0.800 > 0.5" in reason and "mean 0.2667 > 0.02" in reason


def test_within_the_bounds_or_without_a_comparison_nothing_is_reported():
    config = RolloutCheckConfig(max_probs_diff=0.5, mean_probs_diff=0.02)
    assert mismatch({}, config) is None
    assert mismatch({MAX_DIFF: 0.5, MEAN_DIFF: 0.02}, config) is None
    assert "mean" in mismatch({MAX_DIFF: 0.1, MEAN_DIFF: 0.03}, config)


@pytest.mark.parametrize("bounds", [{"max_probs_diff": 0.0}, {"mean_probs_diff": 1.5}])
def test_bounds_outside_zero_to_one_are_refused(bounds):
    with pytest.raises(ValueError, match="rollout_check"):
        RolloutCheckConfig(**bounds)
