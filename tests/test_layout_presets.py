"""The ``layout`` presets (conf/layout/): each, with each recipe, passes verl's validation and preflight on the GPUs
it is for, and sets what it promises."""

import importlib

import pytest
from omegaconf import OmegaConf
from test_preflight import good, machine, model_dir  # noqa: F401 (machine is the fixture good needs)

from recipe.verl_runtime.preflight import check_gpus, preflight
from reward_server.config import server_config

pytestmark = pytest.mark.slow

RECIPES = ("samr1", "veteran")
# Preset (as +layout=...) -> the GPUs of the machine it is for.
LAYOUTS = {
    "sam2_colocated": 8,  # SAM-Veteran's 8 verl GPUs on one 8-GPU node
    "4gpu_80gb": 4,
    "8gpu_48gb": 8,
    "[4gpu_80gb,lora]": 4,
    "[8gpu_48gb,lora]": 8,
}
PROMISES = {
    "sam2_colocated": {"reward_server.pool.gpus_per_actor": 0.0, "reward_server.engine.device": "cuda:0"},
    "4gpu_80gb": {
        "trainer.n_gpus_per_node": 4,
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": True,
    },
    "8gpu_48gb": {
        "trainer.n_gpus_per_node": 8,
        "actor_rollout_ref.actor.fsdp_config.param_offload": True,
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": True,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 1,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": 2,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 2,
    },
    "lora": {
        "actor_rollout_ref.model.lora_rank": 16,
        "actor_rollout_ref.model.lora_alpha": 32,
        "actor_rollout_ref.model.target_modules": "all-linear",
        "actor_rollout_ref.model.exclude_modules": ".*visual.*",
        "actor_rollout_ref.actor.optim.lr": 1e-5,
        "actor_rollout_ref.rollout.load_format": "safetensors",
        "actor_rollout_ref.rollout.layered_summon": True,
    },
}


@pytest.fixture(scope="module")
def vllm_helpers():
    """verl's vLLM helpers, which validate_config imports for a LoRA rank, imported before ``machine`` pretends CUDA:
    with that pretence Triton looks for libcuda, which a machine without GPUs lacks (on a GPU node either order works).
    """
    importlib.import_module("verl.workers.rollout.vllm_rollout.utils")


def presets(layout: str) -> list[str]:
    return layout.strip("[]").split(",")


def validate(config) -> None:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_passes_verl_and_preflight_on_its_gpus(vllm_helpers, machine, recipe, layout):  # noqa: F811
    config = good(machine, recipe, f"+layout={layout}")
    validate(config)
    assert preflight(config, available_gpus=LAYOUTS[layout]) == []
    for preset in presets(layout):
        for key, value in PROMISES[preset].items():
            assert OmegaConf.select(config, key) == value, (preset, key)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("layout", ["4gpu_80gb", "8gpu_48gb"])
def test_sam2_shares_verls_first_gpu_and_both_keep_their_batch(machine, recipe, layout):  # noqa: F811
    default, config = good(machine, recipe), good(machine, recipe, f"+layout={layout}")
    server = server_config(config.reward_server)
    assert server.pool.gpus_per_actor == 0 and server.pool.num_actors == 1
    assert server.engine.device == "cuda:0"  # named: device auto in a zero-GPU Ray actor would run on the CPU
    assert server.engine.cache_bytes == 1 << 30 and max(server.engine.encoder_batch_sizes) == 4
    assert config.trainer.n_gpus_per_node == LAYOUTS[layout]  # every GPU of the machine for verl
    assert config.data.train_batch_size == default.data.train_batch_size  # 14 for SAM-R1, the paper's 16 otherwise
    assert config.actor_rollout_ref.rollout.gpu_memory_utilization == 0.6


def test_a_fractional_sam2_gpu_still_costs_verl_a_whole_one(machine):  # noqa: F811
    """verl's resource pools take whole GPUs, so a fraction reserved in Ray leaves verl one GPU fewer."""
    config = good(machine, "veteran", "+layout=4gpu_80gb", "reward_server.pool.gpus_per_actor=0.25")
    (error,) = check_gpus(config, 4)
    assert "4 GPUs for verl" in error and "+ 0.25 for SAM2" in error and "trainer.n_gpus_per_node=3" in error


@pytest.mark.parametrize("recipe", RECIPES)
def test_lora_alone_keeps_the_recipes_layout(vllm_helpers, machine, recipe):  # noqa: F811
    default, config = good(machine, recipe), good(machine, recipe, "+layout=lora")
    assert config.actor_rollout_ref.model.lora_rank > 0
    assert config.trainer.n_gpus_per_node == default.trainer.n_gpus_per_node
    assert server_config(config.reward_server).pool.gpus_per_actor == 1
    validate(config)
    assert preflight(config, available_gpus=default.trainer.n_gpus_per_node + 1) == []


def test_the_lora_targets_leave_the_vision_tower_out(tiny_qwen_path):
    """PEFT with the preset's targets adapts the language model's linear layers and none of the vision tower's, which
    ``all-linear`` alone would include."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    lora = PROMISES["lora"]

    def adapted(exclude: str | None) -> set[str]:
        model = AutoModelForImageTextToText.from_pretrained(tiny_qwen_path, torch_dtype=torch.float32)
        config = LoraConfig(
            r=lora["actor_rollout_ref.model.lora_rank"],
            lora_alpha=lora["actor_rollout_ref.model.lora_alpha"],
            target_modules=lora["actor_rollout_ref.model.target_modules"],
            exclude_modules=exclude,
        )
        names = (name for name, _ in get_peft_model(model, config).named_parameters())
        return {name.rsplit(".lora_A", 1)[0] for name in names if ".lora_A." in name}

    assert any("visual" in name for name in adapted(None))
    language_only = adapted(lora["actor_rollout_ref.model.exclude_modules"])
    assert language_only and not any("visual" in name for name in language_only)
    assert any(name.endswith("self_attn.q_proj") for name in language_only)
    assert any(name.endswith("mlp.down_proj") for name in language_only)


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_gpu_smoke_preset_passes_verl_and_preflight_on_one_gpu(vllm_helpers, machine, recipe):  # noqa: F811
    """``+smoke=gpu`` (make gpu-check's training part): the tiny models on one GPU, SAM2 beside verl on it."""
    config = good(machine, recipe, "+smoke=gpu")
    validate(config)
    assert preflight(config, available_gpus=1) == []
    assert OmegaConf.select(config, "actor_rollout_ref.rollout.name") == "vllm"
    assert OmegaConf.select(config, "actor_rollout_ref.rollout.load_format") == "dummy"


MODELS = {
    "qwen2_5_vl_7b": ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl"),
    "qwen2_5_vl_32b": ("Qwen/Qwen2.5-VL-32B-Instruct", "qwen2_5_vl"),
    "qwen3_vl_8b": ("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl"),
    "qwen3_vl_4b": ("Qwen/Qwen3-VL-4B-Instruct", "qwen3_vl"),
}
"""Each ``+model=`` preset's checkpoint and its family (conf/model/)."""


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("name", MODELS)
def test_each_base_model_preset_names_its_checkpoint_and_passes_verl_and_preflight(machine, recipe, name):  # noqa: F811
    from recipe.verl_runtime.compose import compose_recipe

    checkpoint, family = MODELS[name]
    assert compose_recipe(recipe, [f"+model={name}"]).actor_rollout_ref.model.path == checkpoint
    # The same preset on the checkpoint's family, as a local directory would hold it.
    local = model_dir(machine / name, family)
    config = good(machine, recipe, f"+model={name}", f"actor_rollout_ref.model.path={local}")
    validate(config)
    assert preflight(config, available_gpus=config.trainer.n_gpus_per_node + 1) == []  # verl's GPUs and SAM2's


def test_the_papers_model_preset_is_the_recipes_default():
    from recipe.verl_runtime.compose import compose_recipe

    for recipe in RECIPES:
        chosen = compose_recipe(recipe, ["+model=qwen2_5_vl_7b"])
        assert OmegaConf.to_container(chosen) == OmegaConf.to_container(compose_recipe(recipe, []))
