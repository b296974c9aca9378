"""Everything the project registers with verl exists in a fresh Ray worker, through the entry point alone."""

import pytest
import ray

pytestmark = pytest.mark.slow


def test_registries_are_filled_inside_a_ray_worker():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote
        def lookup() -> dict[str, str]:
            # Only verl is imported here: the project's modules arrive through the verl.plugins entry point.
            from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
            from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
            from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn
            from verl.trainer.ppo.v1 import get_trainer_cls

            return {
                "loss": get_policy_loss_fn("samr1").__module__,
                "reward_manager": get_reward_manager_cls("sam_image").__module__,
                "trainer": get_trainer_cls("sync_reward_metrics").__module__,
                "advantage": get_adv_estimator_fn("grpo_batch_std").__module__,
                "agent_loops": sorted(name for name in _agent_loop_registry if name.startswith("veteran_")),
            }

        assert ray.get(lookup.remote()) == {
            "loss": "recipe.samr1.loss",
            "reward_manager": "recipe.common.reward_manager",
            "trainer": "recipe.common.trainer",
            "advantage": "recipe.veteran.advantage",
            "agent_loops": [
                "veteran_auxiliary",
                "veteran_grounding",
                "veteran_mask_comprehension",
                "veteran_workflow",
            ],
        }
    finally:
        ray.shutdown()
