"""Registrations refuse a name another owner holds, and the project's entries are in verl's registries.

References: verl's own registries and getters (``get_policy_loss_fn``, ``get_adv_estimator_fn``, ``get_trainer_cls``,
``get_reward_manager_cls``, the agent-loop registry resolved with hydra as verl instantiates it, the platform,
engine, rollout-replica and rollout-adapter registries the CPU platform adds to) and the objects verl itself
registers under its names.
"""

import copy

import hydra.utils
import pytest
from verl.experimental.agent_loop import agent_loop as verl_agent_loop
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
from verl.plugin.platform import PlatformRegistry, platform_manager
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.v1 import get_trainer_cls
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.rollout import base as rollout_base
from verl.workers.rollout.replica import RolloutReplicaRegistry

import recipe.verl_plugin  # noqa: F401  (what verl's entry point loads in every process)
from recipe.cpu.platform import PlatformCPU
from recipe.cpu.rollout import ROLLOUT_NAME, HFReplica, HFServerAdapter
from recipe.evaluate.modes import MODES, Mode, get_mode, register_mode
from recipe.samr1.loss import compute_policy_loss_samr1
from recipe.verl_runtime import registration
from recipe.verl_runtime.cpu_selection import PLATFORM
from recipe.verl_runtime.reward_manager import SamImageRewardManager
from recipe.verl_runtime.trainer import TRAINER_MODE, RewardMetricsTrainer
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
        PlatformRegistry._platforms,
        EngineRegistry._engines,
        RolloutReplicaRegistry._registry,
        rollout_base._ROLLOUT_REGISTRY,
    ]
    # The engine registry nests dicts (model type -> backend -> device); deepcopy keeps classes and functions as is.
    saved = [
        copy.deepcopy(registry) if registry is EngineRegistry._engines else dict(registry) for registry in registries
    ]
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


class _IntruderPlatform(PlatformCPU):
    pass


class _IntruderEngine(FSDPEngineWithLMHead):
    pass


def _load_intruder_replica() -> type:
    raise AssertionError("never called")


_INTRUDER_ADAPTER = f"{__name__}._IntruderAdapter"


def _load_hf_replica() -> type:
    return HFReplica


def _fsdp_engine(device: str):
    """The decorator registering a ``language_model`` engine of backend ``fsdp`` on ``device``."""
    return registration.engine("language_model", "fsdp", device)


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
    (
        registration.platform,
        "nvidia",
        lambda: PlatformRegistry.get("nvidia"),
        "verl.plugin.platform.platform_cuda.PlatformCUDA",
        _IntruderPlatform,
        f"{__name__}._IntruderPlatform",
    ),
    (
        _fsdp_engine,
        "cuda",
        lambda: EngineRegistry._engines["language_model"]["fsdp"]["cuda"],
        "verl.workers.engine.fsdp.transformer_impl.FSDPEngineWithLMHead",
        _IntruderEngine,
        f"{__name__}._IntruderEngine",
    ),
    (
        registration.rollout_replica,
        "vllm",
        lambda: RolloutReplicaRegistry._registry["vllm"],  # the loader: calling it would import vllm
        "verl.workers.rollout.replica._load_vllm",
        _load_intruder_replica,
        f"{__name__}._load_intruder_replica",
    ),
    (
        registration.rollout_adapter,
        "vllm",
        lambda: rollout_base._ROLLOUT_REGISTRY[("vllm", "async")],
        "verl.workers.rollout.vllm_rollout.ServerAdapter",
        _INTRUDER_ADAPTER,
        _INTRUDER_ADAPTER,
    ),
]


@pytest.mark.parametrize(
    ("decorator", "name", "registered", "owner", "intruder", "intruder_owner"),
    VERL_NAMES,
    ids=[f"{entry[0].__name__.strip('_')}-{entry[1]}" for entry in VERL_NAMES],
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


def test_an_engine_refused_on_one_device_is_registered_on_none():
    # Every (backend, device) is checked before verl writes any: "fsdp2" on "cpu" is free, "fsdp2" on "cuda" is not.
    with pytest.raises(
        ValueError,
        match=r"fsdp2 engine for 'cuda' is already registered to verl\.workers\.engine\.fsdp\.transformer_impl\.",
    ):
        registration.engine("language_model", "fsdp2", [PLATFORM, "cuda"])(_IntruderEngine)
    assert PLATFORM not in EngineRegistry._engines["language_model"]["fsdp2"]
    assert EngineRegistry._engines["language_model"]["fsdp2"]["cuda"] is FSDPEngineWithLMHead


def test_the_cpu_platforms_registrations_register_again_unchanged():
    # What recipe.cpu.register does (importing it here would patch verl for the CPU in this process), twice: the
    # plugin entry point may run more than once in a process, and verl's engine registry asserts on a taken key.
    for _ in range(2):
        assert registration.platform(PLATFORM)(PlatformCPU) is PlatformCPU
        engine = registration.engine("language_model", ["fsdp", "fsdp2"], PLATFORM)
        assert engine(FSDPEngineWithLMHead) is FSDPEngineWithLMHead
        assert registration.rollout_replica(ROLLOUT_NAME)(_load_hf_replica) is _load_hf_replica
        assert registration.rollout_adapter(ROLLOUT_NAME)("recipe.cpu.rollout.HFServerAdapter")
    assert PlatformRegistry.get(PLATFORM) is PlatformCPU
    assert all(EngineRegistry._engines["language_model"][backend][PLATFORM] for backend in ("fsdp", "fsdp2"))
    assert RolloutReplicaRegistry.get(ROLLOUT_NAME) is HFReplica
    assert rollout_base.get_rollout_class(ROLLOUT_NAME) is HFServerAdapter


def test_the_cpu_names_are_refused_to_another_owner():
    registration.rollout_replica(ROLLOUT_NAME)(_load_hf_replica)
    registration.rollout_adapter(ROLLOUT_NAME)("recipe.cpu.rollout.HFServerAdapter")
    with pytest.raises(ValueError, match=r"platform 'cpu' is already registered to recipe\.cpu\.platform\.PlatformCPU"):
        registration.platform(" CPU ")(_IntruderPlatform)  # verl keys platforms stripped and lower-cased
    with pytest.raises(ValueError, match=rf"rollout replica 'hf_cpu' .* {__name__}\._load_hf_replica"):
        registration.rollout_replica(ROLLOUT_NAME)(_load_intruder_replica)
    with pytest.raises(ValueError, match=r"rollout adapter \('hf_cpu', 'async'\) .* recipe\.cpu\.rollout\.HFServer"):
        registration.rollout_adapter(ROLLOUT_NAME)(_INTRUDER_ADAPTER)
    assert PlatformRegistry.get(PLATFORM) is PlatformCPU
    assert RolloutReplicaRegistry.get(ROLLOUT_NAME) is HFReplica
    assert rollout_base.get_rollout_class(ROLLOUT_NAME) is HFServerAdapter


# verl's getters that answer an unknown name with the valid ones. get_adv_estimator_fn, get_reward_manager_cls,
# get_rollout_class and EngineRegistry.get_engine_cls name only the unknown name, so they are not listed here.
GETTERS = [
    pytest.param(
        lambda: platform_manager._create_platform("tpu"), ["'nvidia'", "'huawei'", "'amd'", "'cpu'"], id="platform"
    ),
    pytest.param(lambda: RolloutReplicaRegistry.get("tgi"), ["'vllm'", "'sglang'", "'trtllm'"], id="rollout_replica"),
    pytest.param(lambda: core_algos.get_policy_loss_fn("ppo"), ["'vanilla'", "'samr1'"], id="policy_loss"),
    pytest.param(lambda: get_trainer_cls("async"), ["sync,", TRAINER_MODE], id="trainer"),
]


@pytest.mark.parametrize(("lookup", "valid"), GETTERS)
def test_a_getter_answers_an_unknown_name_with_the_valid_ones(lookup, valid):
    with pytest.raises(ValueError) as unknown:
        lookup()
    message = str(unknown.value)
    assert all(name in message for name in valid), message
