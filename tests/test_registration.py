"""Registrations refuse a name another owner holds, and the project's entries are in verl's registries.

References: verl's own registries and getters (``get_policy_loss_fn``, ``get_adv_estimator_fn``, ``get_trainer_cls``,
``get_reward_manager_cls``, the agent-loop registry resolved with hydra as verl instantiates it) and the objects
verl itself registers under its names.
"""

import hydra.utils
import pytest
from verl.experimental.agent_loop import agent_loop as verl_agent_loop
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.v1 import get_trainer_cls
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

import recipe.verl_plugin  # noqa: F401  (what verl's entry point loads in every process)
from recipe.common import registration
from recipe.common.reward_manager import SamImageRewardManager
from recipe.common.trainer import TRAINER_MODE, RewardMetricsTrainer
from recipe.evaluate.modes import MODES, Mode, get_mode, register_mode
from recipe.samr1.loss import compute_policy_loss_samr1
from recipe.veteran.advantage import compute_grpo_batch_std_advantage
from recipe.veteran.agent_loops import AuxiliaryLoop, GroundingLoop, MaskComprehensionLoop
from recipe.veteran.workflow_loop import WorkflowLoop


@pytest.fixture(autouse=True)
def restored_registries():
    """Every registry as it was: a refusal that came too late would otherwise leak into other tests."""
    registries = [
        core_algos.POLICY_LOSS_REGISTRY,
        core_algos.ADV_ESTIMATOR_REGISTRY,
        TRAINER_REGISTRY,
        REWARD_MANAGER,
        verl_agent_loop._agent_loop_registry,
        MODES,
    ]
    saved = [dict(registry) for registry in registries]
    yield
    for registry, entries in zip(registries, saved, strict=True):
        registry.clear()
        registry.update(entries)


def _intruder_loss(*args, **kwargs):
    raise AssertionError("never called")


class _IntruderTrainer(PPOTrainerSync):
    pass


class _IntruderRewardManager(NaiveRewardManager):
    pass


class _IntruderLoop(SingleTurnAgentLoop):
    pass


def _loop_class(name: str) -> type:
    """The class verl instantiates for agent loop ``name`` (it passes the entry's ``_target_`` to hydra)."""
    return hydra.utils.get_class(verl_agent_loop._agent_loop_registry[name]["_target_"])


# (decorator, verl's name, what verl registered under it, its owner, a different object, its owner)
VERL_NAMES = [
    (
        registration.policy_loss,
        "vanilla",
        lambda: core_algos.get_policy_loss_fn("vanilla"),
        "verl.trainer.ppo.core_algos.compute_policy_loss_vanilla",
        _intruder_loss,
        f"{__name__}._intruder_loss",
    ),
    (
        registration.adv_estimator,
        "grpo",
        lambda: core_algos.get_adv_estimator_fn("grpo"),
        "verl.trainer.ppo.core_algos.compute_grpo_outcome_advantage",
        _intruder_loss,
        f"{__name__}._intruder_loss",
    ),
    (
        registration.trainer,
        "sync",
        lambda: get_trainer_cls("sync"),
        "verl.trainer.ppo.v1.trainer_sync.PPOTrainerSync",
        _IntruderTrainer,
        f"{__name__}._IntruderTrainer",
    ),
    (
        registration.reward_manager,
        "naive",
        lambda: get_reward_manager_cls("naive"),
        "verl.experimental.reward_loop.reward_manager.naive.NaiveRewardManager",
        _IntruderRewardManager,
        f"{__name__}._IntruderRewardManager",
    ),
    (
        registration.agent_loop,
        "single_turn_agent",
        lambda: _loop_class("single_turn_agent"),
        "verl.experimental.agent_loop.single_turn_agent_loop.SingleTurnAgentLoop",
        _IntruderLoop,
        f"{__name__}._IntruderLoop",
    ),
]


@pytest.mark.parametrize(
    ("decorator", "name", "registered", "owner", "intruder", "intruder_owner"),
    VERL_NAMES,
    ids=[entry[1] for entry in VERL_NAMES],
)
def test_a_verl_name_taken_by_another_object_is_refused_naming_both(
    decorator, name, registered, owner, intruder, intruder_owner
):
    before = registered()
    with pytest.raises(ValueError) as refused:
        decorator(name)(intruder)
    message = str(refused.value)
    assert repr(name) in message and owner in message and intruder_owner in message
    assert registered() is before, "verl's entry must survive the refusal"


def test_our_names_are_refused_to_another_object_too():
    with pytest.raises(ValueError, match=r"policy loss 'samr1' .* recipe\.samr1\.loss\.compute_policy_loss_samr1"):
        registration.policy_loss("samr1")(_intruder_loss)
    with pytest.raises(ValueError, match=r"agent loop 'veteran_workflow' .* recipe\.veteran\.workflow_loop"):
        registration.agent_loop("veteran_workflow")(_IntruderLoop)
    assert core_algos.get_policy_loss_fn("samr1") is compute_policy_loss_samr1
    assert _loop_class("veteran_workflow") is WorkflowLoop


def test_the_same_object_registers_again():
    assert registration.policy_loss("samr1")(compute_policy_loss_samr1) is compute_policy_loss_samr1
    assert registration.adv_estimator("grpo_batch_std")(compute_grpo_batch_std_advantage)
    assert registration.trainer(TRAINER_MODE)(RewardMetricsTrainer) is RewardMetricsTrainer
    assert registration.reward_manager("sam_image")(SamImageRewardManager) is SamImageRewardManager
    assert registration.agent_loop("veteran_grounding")(GroundingLoop) is GroundingLoop
    assert core_algos.get_policy_loss_fn("samr1") is compute_policy_loss_samr1
    assert get_trainer_cls(TRAINER_MODE) is RewardMetricsTrainer
    assert _loop_class("veteran_grounding") is GroundingLoop


def test_a_re_executed_module_registers_its_agent_loop_again():
    # importlib.reload builds a new class with the same module.qualname; verl keeps only that path for agent loops.
    rebuilt = type(GroundingLoop.__name__, (SingleTurnAgentLoop,), {"__module__": GroundingLoop.__module__})
    rebuilt.__qualname__ = GroundingLoop.__qualname__
    assert registration.agent_loop("veteran_grounding")(rebuilt) is rebuilt
    assert _loop_class("veteran_grounding") is GroundingLoop


def test_a_lambda_is_never_taken_for_another_lambda():
    entries = {"mode": lambda: 1}
    with pytest.raises(ValueError, match="already registered"):
        registration.unique("test", entries, "mode")(lambda: 2)


def test_the_projects_registrations_are_in_verls_registries():
    assert core_algos.get_policy_loss_fn("samr1") is compute_policy_loss_samr1
    assert core_algos.get_adv_estimator_fn("grpo_batch_std") is compute_grpo_batch_std_advantage
    assert get_trainer_cls(TRAINER_MODE) is RewardMetricsTrainer
    assert get_reward_manager_cls("sam_image") is SamImageRewardManager
    loops = {
        "veteran_grounding": GroundingLoop,
        "veteran_mask_comprehension": MaskComprehensionLoop,
        "veteran_auxiliary": AuxiliaryLoop,
        "veteran_workflow": WorkflowLoop,
    }
    for name, cls in loops.items():
        assert _loop_class(name) is cls, name


def test_evaluation_modes_refuse_a_taken_name_and_the_getter_lists_the_valid_ones():
    samr1 = get_mode("samr1")
    with pytest.raises(ValueError, match="evaluation mode 'samr1' is already registered"):
        register_mode("samr1", Mode(lambda sample, cfg: None))
    assert get_mode("samr1") is samr1 and register_mode("samr1", samr1) is samr1
    with pytest.raises(ValueError) as unknown:
        get_mode("sam3")
    assert all(repr(name) in str(unknown.value) for name in ("samr1", "veteran", "baseline", "oracle_box"))
