"""Preflight on the real recipe configs: every check fires on a broken config, names a fix that works, and stays
silent on a good one."""

import json
import re
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from recipe.verl_runtime import preflight as pf
from recipe.verl_runtime.checkpoints import COMPLETE_MARKER, TRACKER
from recipe.verl_runtime.compose import compose_recipe
from recipe.verl_runtime.preflight import (
    ANSWER_TOKENS,
    IMAGE_TOKENS,
    OVERLAY_TEXT_TOKENS,
    absolute_paths,
    check_attention,
    check_batch_sizes,
    check_compiler,
    check_cpus,
    check_datasets,
    check_driver,
    check_gpus,
    check_model,
    check_pool_devices,
    check_resume,
    check_sam_checkpoint,
    check_sam_placement,
    check_workflow_budget,
    preflight,
)
from recipe.verl_runtime.preflight import machine as machine_checks

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HUB_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


def compose(name: str, *overrides: str):
    return compose_recipe(name, list(overrides))


def write_rows(path: Path, rows: int, agent: str) -> str:
    columns = {column: ["x"] * rows for column in pf.REQUIRED_COLUMNS}
    columns["agent_name"] = [agent] * rows
    pq.write_table(pa.table(columns), path)
    return str(path)


def model_dir(root: Path, model_type: str = "qwen2_5_vl") -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(root)


def fixed_by(message: str) -> list[str]:
    """The ``key=value`` overrides a message names as its fix (after its last "set", or the GPU or compile lead-in)."""
    tail = re.split(r"\bset |turn compilation off: |lower trainer\.n_gpus_per_node: ", message)[-1]
    return [token.rstrip(",.;") for token in tail.split() if "=" in token]


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A node where everything preflight looks at is present: CUDA, 64 CPUs, a compiler, Python.h, online."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(machine_checks.os, "cpu_count", lambda: 64)
    monkeypatch.setenv("CC", "gcc")
    header = tmp_path / "include" / "Python.h"
    header.parent.mkdir()
    header.touch()
    monkeypatch.setattr(machine_checks, "_python_header", lambda: header)
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


def good(machine: Path, recipe: str, *overrides: str, rows: int = 16, agent: str = "veteran_grounding"):
    """The recipe's defaults with local files in place of the ones a GPU node would have."""
    data = write_rows(machine / f"{recipe}_{agent}.parquet", rows, agent)
    checkpoint = machine / "sam2.1_hiera_large.pt"
    checkpoint.touch()
    return compose(
        recipe,
        f"data.train_files=[{data}]",
        f"data.val_files={data}",
        f"actor_rollout_ref.model.path={model_dir(machine / 'model')}",
        f"reward_server.engine.checkpoint={checkpoint}",
        f"trainer.default_local_dir={machine / 'checkpoints'}",
        *overrides,
    )


def test_the_recipes_defaults_pass_where_their_gpus_exist(machine):
    assert preflight(good(machine, "samr1"), available_gpus=8) == []  # 7 for verl + 1 for SAM2
    assert preflight(good(machine, "veteran"), available_gpus=9) == []  # the paper's 8 for verl + 1 for SAM2


@pytest.mark.parametrize(
    ("recipe", "preset"),
    [
        ("samr1", "policy_updates=updates_4"),
        ("samr1", "+ablation=no_kl"),
        ("veteran", "+veteran_ablation=qwen_32b"),
        ("veteran", "+veteran_ablation=rollouts_4"),
        ("veteran", "+veteran_ablation=rollouts_16"),
        ("samr1", "+ablation=generalized"),
        ("veteran", "+veteran_ablation=generalized"),
    ],
)
def test_the_table_presets_pass_preflight_on_the_papers_layout(machine, recipe, preset):
    assert preflight(good(machine, recipe, preset), available_gpus=8 if recipe == "samr1" else 9) == []


def test_mask_comprehension_rows_without_stored_logits_are_refused(machine):
    from data_prep.schema import ROW

    def mc_file(name: str, schema: pa.Schema) -> str:
        table = pa.Table.from_pylist([{"agent_name": "veteran_mask_comprehension"}] * 16, schema=schema)
        pq.write_table(table, machine / name)
        return str(machine / name)

    # The schema data_prep writes today, and the same without init_logits (files made before it existed).
    truth = ROW.field("reward_model").type.field("ground_truth").type
    old_truth = pa.struct([truth.field(i) for i in range(truth.num_fields) if truth.field(i).name != "init_logits"])
    old_row = ROW.set(
        ROW.get_field_index("reward_model"), pa.field("reward_model", pa.struct([("ground_truth", old_truth)]))
    )
    current, stale = mc_file("mc_new.parquet", ROW), mc_file("mc_old.parquet", old_row)
    assert check_datasets(good(machine, "veteran", f"data.train_files=[{current}]", f"data.val_files={current}")) == []
    (error,) = check_datasets(good(machine, "veteran", f"data.train_files=[{stale}]", f"data.val_files={current}"))
    assert error.startswith("data.train_files:") and "without init_logits" in error and "make data-veteran" in error


def test_training_files_of_two_row_schemas_are_refused(machine):
    from data_prep.schema import ROW

    truth = ROW.field("reward_model").type.field("ground_truth").type
    old_truth = pa.struct([truth.field(i) for i in range(truth.num_fields) if truth.field(i).name != "objects"])
    old_row = ROW.set(
        ROW.get_field_index("reward_model"), pa.field("reward_model", pa.struct([("ground_truth", old_truth)]))
    )
    paths = []
    for name, schema in (("new.parquet", ROW), ("old.parquet", old_row)):
        pq.write_table(pa.Table.from_pylist([{"agent_name": "veteran_grounding"}] * 16, schema=schema), machine / name)
        paths.append(str(machine / name))
    both = f"data.train_files=[{','.join(paths)}]"
    assert (
        check_datasets(good(machine, "veteran", f"data.train_files=[{paths[0]}]", f"data.val_files={paths[0]}")) == []
    )
    (error,) = check_datasets(good(machine, "veteran", both, f"data.val_files={paths[0]}"))
    assert (
        error.startswith(f"data.train_files: {paths[1]} was written with an older row schema") and "'objects'" in error
    )


def test_the_batch_is_drawn_from_all_training_files_together(machine):
    files = [write_rows(machine / f"task_{i}.parquet", 1, "veteran_grounding") for i in range(4)]
    listed = f"data.train_files=[{','.join(files)}]"
    assert check_datasets(good(machine, "veteran", listed, "data.train_batch_size=4")) == []
    (error,) = check_datasets(good(machine, "veteran", listed, "data.train_batch_size=5"))
    assert "4 rows in all, fewer than data.train_batch_size" in error


def test_a_cpu_run_skips_the_gpu_checks(machine, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(machine_checks.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(machine_checks, "_c_compiler", lambda: None)
    config = good(machine, "samr1", "trainer.device=cpu")
    assert preflight(config, available_gpus=0) == []
    assert len(preflight(good(machine, "samr1"), available_gpus=0)) == 4  # driver, compiler, GPU and CPU counts


def test_every_line_is_one_line_and_an_odd_config_is_reported_not_raised():
    for config in (OmegaConf.create({}), OmegaConf.create({"trainer": {"n_gpus_per_node": "eight", "nnodes": 1}})):
        errors = preflight(config, available_gpus=8)
        assert errors and all(isinstance(e, str) and "\n" not in e for e in errors)
    assert "cannot check this config" in check_gpus(OmegaConf.create({}), 8)[0]


# Attention (item 3 of docs/gpu-first-run): flash-attn is absent, so the defaults are sdpa on padded batches.


def test_the_recipes_default_to_sdpa_without_remove_padding():
    for recipe in ("samr1", "veteran"):
        model = compose(recipe).actor_rollout_ref.model
        assert model.override_config.attn_implementation == "sdpa" and model.use_remove_padding is False


@pytest.mark.parametrize(
    "overrides",
    [
        ["actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2"],
        ["actor_rollout_ref.model.use_remove_padding=true"],
        ["~actor_rollout_ref.model.override_config.attn_implementation"],  # verl's default: flash_attention_2
    ],
)
def test_attention_that_needs_flash_attn_is_reported_with_a_fix(machine, overrides):
    config = good(machine, "samr1", *overrides)
    (error,) = check_attention(config)
    assert "make flash-attn" in error and "flash_attn" in error
    assert check_attention(good(machine, "samr1", *overrides, *fixed_by(error))) == []


def test_remove_padding_needs_flash_attn_only_on_qwen2_vl(machine, monkeypatch):
    llama = model_dir(machine / "llama", "llama")
    assert check_attention(good(machine, "samr1", "actor_rollout_ref.model.use_remove_padding=true")) != []
    llama_config = good(
        machine, "samr1", "actor_rollout_ref.model.use_remove_padding=true", f"actor_rollout_ref.model.path={llama}"
    )
    assert check_attention(llama_config) == []
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    flash = good(
        machine,
        "samr1",
        "actor_rollout_ref.model.use_remove_padding=true",
        "actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2",
    )
    assert check_attention(flash) == []


# Driver and compiler (items 1 and 4).


def test_a_cuda_run_needs_torch_to_reach_the_gpu(machine, monkeypatch):
    assert check_driver(good(machine, "samr1")) == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (error,) = check_driver(good(machine, "samr1"))
    assert "torch.cuda.is_available() is false" in error and "driver" in error
    assert check_driver(good(machine, "samr1", "trainer.device=cpu")) == []


def test_a_gpu_run_needs_a_compiler_and_python_headers_even_in_eager_mode(machine, monkeypatch):
    """vLLM 0.24 runs Qwen2.5-VL's M-RoPE as a Triton kernel when eager mode switches its custom ops on
    (``VllmConfig.__post_init__`` adds "all" without compilation; ``MRotaryEmbedding.forward_cuda``)."""
    assert check_compiler(good(machine, "samr1")) == []
    monkeypatch.setattr(machine_checks, "_c_compiler", lambda: None)
    every_switch_off = (
        "actor_rollout_ref.rollout.enforce_eager=true",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
        "actor_rollout_ref.ref.fsdp_config.use_torch_compile=false",
        "reward_server.engine.compile_encoder=false",
    )
    (error,) = check_compiler(good(machine, "samr1", *every_switch_off))
    assert "C compiler" in error and "apt-get install gcc" in error and "eager" in error
    assert fixed_by(error) == []  # nothing to set: install them
    monkeypatch.setattr(machine_checks, "_python_header", lambda: machine / "absent" / "Python.h")
    (error,) = check_compiler(good(machine, "veteran"))
    assert "C compiler" in error and f"Python.h ({machine / 'absent'})" in error
    assert check_compiler(good(machine, "samr1", "trainer.device=cpu")) == []


def test_a_gpu_run_needs_more_shared_memory_than_a_containers_default(machine, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(64 << 20, 0, 64 << 20))  # Docker's default
    (error,) = pf.check_shared_memory(good(machine, "samr1"))
    assert "/dev/shm holds 64 MiB" in error and "--ipc=host" in error
    assert pf.check_shared_memory(good(machine, "samr1", "trainer.device=cpu")) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(16 << 30, 0, 16 << 30))
    assert pf.check_shared_memory(good(machine, "samr1")) == []


def test_several_nodes_with_rdma_need_unlimited_locked_memory(machine, monkeypatch):
    import resource

    devices = machine / "infiniband"
    (devices / "mlx5_0").mkdir(parents=True)
    monkeypatch.setattr(machine_checks, "INFINIBAND", devices)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (64 << 10, 64 << 10))  # a container's default
    (error,) = pf.check_locked_memory(good(machine, "samr1", "trainer.nnodes=2"))
    assert "limited to 64 KiB" in error and "memlock=-1" in error
    assert pf.check_locked_memory(good(machine, "samr1")) == []  # one node: NCCL stays on the node
    assert pf.check_locked_memory(good(machine, "samr1", "trainer.nnodes=2", "trainer.device=cpu")) == []
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert pf.check_locked_memory(good(machine, "samr1", "trainer.nnodes=2")) == []
    (devices / "mlx5_0").rmdir()  # no RDMA device: NCCL uses sockets, which pin nothing
    monkeypatch.setattr(resource, "getrlimit", lambda which: (64 << 10, 64 << 10))
    assert pf.check_locked_memory(good(machine, "samr1", "trainer.nnodes=2")) == []


# GPU layout and batch divisibility (items 2 and 6).


def test_veterans_paper_layout_gets_a_complete_override_that_fits(machine):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    paper = good(machine, "veteran")  # the default: 8 for verl + 1 for SAM2
    assert check_gpus(paper, 9) == [] and check_batch_sizes(paper) == []
    (error,) = check_gpus(paper, 8)
    assert fixed_by(error) == ["trainer.n_gpus_per_node=7", "data.train_batch_size=14"]
    fixed = good(machine, "veteran", *fixed_by(error))
    assert check_gpus(fixed, 8) == [] and check_batch_sizes(fixed) == []
    validate_config(fixed, use_reference_policy=need_reference_policy(fixed), use_critic=need_critic(fixed))


def test_the_gpu_advice_keeps_whole_rollout_replicas(machine):
    """verl builds ``GPUs // (tensor x data x pipeline parallel)`` vLLM replicas and leaves the rest idle
    (``LLMServerManager._initialize_llm_servers``): Table 9's 32B model shards vLLM over 4 GPUs."""
    qwen_32b = "+veteran_ablation=qwen_32b"
    (error,) = check_gpus(good(machine, "veteran", qwen_32b), 8)  # 8 for verl + 1 for SAM2 do not fit
    assert fixed_by(error)[0] == "trainer.n_gpus_per_node=4"  # not 7: one replica and 3 idle GPUs
    fixed = good(machine, "veteran", qwen_32b, *fixed_by(error))
    assert check_gpus(fixed, 8) == [] and check_batch_sizes(fixed) == []
    (error,) = check_batch_sizes(good(machine, "veteran", qwen_32b, "trainer.n_gpus_per_node=7"))
    assert "rollout replicas of 4" in error and "build 1 and leave 3 idle" in error
    assert "no room is left for one rollout replica of 4" in check_gpus(good(machine, "veteran", qwen_32b), 4)[0]


def test_gpu_count_messages(machine):
    (error,) = check_gpus(compose("samr1", "trainer.n_gpus_per_node=8"), 8)
    assert "lower trainer.n_gpus_per_node" in error and fixed_by(error) == ["trainer.n_gpus_per_node=7"]
    two_nodes = compose("samr1", "trainer.nnodes=2", "trainer.n_gpus_per_node=8", "reward_server.pool.num_actors=2")
    assert fixed_by(check_gpus(two_nodes, 16)[0]) == ["trainer.n_gpus_per_node=7"]
    assert "no room is left for one rollout replica of 1 GPU " in check_gpus(compose("samr1"), 1)[0]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        # 14 x 8 / 8 GPUs = 14 responses per GPU: micro-batch 4 fails the first compute_log_prob (design note item 6).
        (["trainer.n_gpus_per_node=8"], "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"),
        (["trainer.n_gpus_per_node=8"], "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"),
        (
            ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3"],
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
        ),
        (["data.train_batch_size=15"], "data.train_batch_size"),
        (["actor_rollout_ref.actor.ppo_mini_batch_size=5"], "actor_rollout_ref.actor.ppo_mini_batch_size"),
        (["actor_rollout_ref.actor.ppo_mini_batch_size=20"], "actor_rollout_ref.actor.ppo_mini_batch_size"),
    ],
)
def test_batch_sizes_that_do_not_divide_are_reported_with_a_value_that_works(machine, overrides, key):
    errors = check_batch_sizes(good(machine, "samr1", *overrides))
    (error,) = [e for e in errors if e.startswith(key)]
    assert any(fix.startswith(f"{key}=") for fix in fixed_by(error))
    fixes = [fix for e in errors for fix in fixed_by(e)]
    assert check_batch_sizes(good(machine, "samr1", *overrides, *fixes)) == []


def test_batch_sizes_follow_verl_where_it_balances_by_tokens(machine):
    dynamic = good(machine, "samr1", "trainer.n_gpus_per_node=8", "actor_rollout_ref.actor.use_dynamic_bsz=true")
    assert check_batch_sizes(dynamic) == []
    no_kl = good(machine, "samr1", "trainer.n_gpus_per_node=8", "actor_rollout_ref.actor.use_kl_loss=false")
    assert [e.split("=")[0] for e in check_batch_sizes(no_kl)] == [
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"
    ]


# CPUs (item 10), two nodes (item 9).


def test_a_local_ray_needs_the_cpus_the_run_reserves(machine, monkeypatch):
    monkeypatch.setattr(machine_checks.os, "cpu_count", lambda: 16)
    config = good(machine, "samr1")
    (error,) = check_cpus(config)
    assert fixed_by(error)[0] == "ray_kwargs.ray_init.num_cpus=33"  # 7 x 3 + 2 SAM2 + 9 TransferQueue + 1
    assert check_cpus(good(machine, "samr1", fixed_by(error)[0])) == []
    assert check_cpus(good(machine, "samr1", "trainer.device=cpu")) == []
    assert preflight(config) == []  # joining a cluster: its CPUs are not this machine's


def test_several_sam2_actors_spread_over_the_nodes_by_default(machine):
    two_nodes = ("trainer.nnodes=2", "reward_server.pool.num_actors=2")
    assert check_sam_placement(good(machine, "samr1", *two_nodes)) == []
    (error,) = check_sam_placement(good(machine, "samr1", *two_nodes, "reward_server.pool.strategy=PACK"))
    assert fixed_by(error) == ["reward_server.pool.strategy=SPREAD"]


def test_relative_paths_become_absolute_on_the_driver(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    model_dir(tmp_path / "ckpt" / "qwen")
    config = compose("samr1", "data.train_files=data/train.parquet", "actor_rollout_ref.model.path=ckpt/qwen")
    absolute_paths(config)
    assert config.data.train_files == str(tmp_path / "data" / "train.parquet")
    assert config.data.val_files == config.data.train_files  # still the interpolation
    assert config.trainer.default_local_dir == str(tmp_path / "outputs" / "samrl" / "samr1" / "checkpoints")
    assert config.actor_rollout_ref.model.path == str(tmp_path / "ckpt" / "qwen")
    veteran = compose("veteran")
    absolute_paths(veteran)
    assert all(Path(file).is_absolute() for file in veteran.data.train_files)
    assert veteran.actor_rollout_ref.model.path == HUB_MODEL  # a hub id stays one


# The workflow loop's token budget (item 8).


def test_workflow_rows_need_room_for_their_refinement_steps(machine):
    config = good(machine, "veteran", agent="veteran_workflow")
    (error,) = check_workflow_budget(config)
    *longer, fewer_steps = fixed_by(error)
    assert longer[0] == "data.max_response_length=5216" and fewer_steps == "veteran.workflow.max_steps=0"
    for fix in (longer, [fewer_steps]):
        fixed = good(machine, "veteran", *fix, agent="veteran_workflow")
        assert check_workflow_budget(fixed) == [] and check_batch_sizes(fixed) == []
    assert check_workflow_budget(good(machine, "veteran")) == []  # single-turn task rows only


def test_a_longer_workflow_budget_keeps_the_tokens_of_each_micro_batch(machine):
    """Without remove-padding verl pads a micro-batch to its longest sequence: 1,300 + 5,216 tokens at micro-batch 2
    would be 2.5 times the update's activations the layouts were sized for (design note, item 6)."""
    before = good(machine, "veteran", agent="veteran_workflow")
    (error,) = check_workflow_budget(before)
    after = good(machine, "veteran", *fixed_by(error)[:-1], agent="veteran_workflow")
    micro_keys = (
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
    )
    for key in micro_keys:
        micro = [OmegaConf.select(config, key) for config in (before, after)]
        length = [config.data.max_prompt_length + config.data.max_response_length for config in (before, after)]
        assert micro[1] * length[1] <= micro[0] * length[0] or micro[1] == 1 < micro[0], (key, micro, length)
    dynamic = good(machine, "veteran", "actor_rollout_ref.actor.use_dynamic_bsz=true", agent="veteran_workflow")
    assert "ppo_micro_batch_size_per_gpu" not in check_workflow_budget(dynamic)[0]  # verl counts tokens itself


def test_the_overlay_turn_fits_the_budgets_token_estimate(tiny_qwen_path):
    """One overlay turn through the chat template, as the workflow loop appends it after an answer."""
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor

    from recipe.task.prompts import build_prompt

    processor = AutoProcessor.from_pretrained(tiny_qwen_path)
    image = Image.fromarray(np.zeros((840, 840, 3), np.uint8))
    question = " ".join(["the object a person would pick up first to boil some water quickly"] * 2)

    def user(task: str) -> dict:
        return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": build_prompt(task, question)}]}

    first = [user("grounding"), {"role": "assistant", "content": "<think>x</think><answer>{}</answer>"}]
    before = processor(text=[processor.apply_chat_template(first)], images=[image])["input_ids"][0]
    after = processor(
        text=[processor.apply_chat_template([*first, user("mask_comprehension")], add_generation_prompt=True)],
        images=[image, image],
    )["input_ids"][0]
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert list(after).count(pad) - list(before).count(pad) == IMAGE_TOKENS
    assert IMAGE_TOKENS + 100 < len(after) - len(before) <= IMAGE_TOKENS + OVERLAY_TEXT_TOKENS


def test_the_budget_counts_image_tokens_with_the_checkpoints_own_processor(machine):
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor

    from recipe.tiny_vlm import SMALL_IMAGE_MAX_PIXELS, build_tiny_qwen2_5_vl

    small = build_tiny_qwen2_5_vl(machine / "small_images", max_pixels=SMALL_IMAGE_MAX_PIXELS)
    processor = AutoProcessor.from_pretrained(small)
    image = Image.fromarray(np.zeros((840, 840, 3), np.uint8))
    ids = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image])["input_ids"][0]
    tokens = list(ids).count(processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    assert tokens == pf.image_tokens(str(small)) < IMAGE_TOKENS
    config = good(machine, "veteran", f"actor_rollout_ref.model.path={small}", agent="veteran_workflow")
    (error,) = check_workflow_budget(config)
    steps = config.veteran.workflow.max_steps
    need = ANSWER_TOKENS + steps * (tokens + OVERLAY_TEXT_TOKENS + ANSWER_TOKENS)
    assert fixed_by(error)[0] == f"data.max_response_length={need}"
    assert (
        check_workflow_budget(
            good(
                machine,
                "veteran",
                f"actor_rollout_ref.model.path={small}",
                f"data.max_response_length={need}",
                agent="veteran_workflow",
            )
        )
        == []
    )


# Checkpoints (item 11).


def save_checkpoint(root: Path, step: int, world: int) -> None:
    actor = root / f"global_step_{step}" / "actor"
    actor.mkdir(parents=True)
    for rank in range(world):
        (actor / f"model_world_size_{world}_rank_{rank}.pt").touch()
    (actor.parent / COMPLETE_MARKER).touch()
    (root / TRACKER).write_text(str(step))


def test_resuming_a_checkpoint_of_another_layout_is_reported(machine):
    save_checkpoint(machine / "checkpoints", 50, 8)
    (error,) = check_resume(good(machine, "samr1"))
    assert "global_step_50" in error and "8 GPUs" in error and "trainer.resume_mode=disable" in error
    assert check_resume(good(machine, "samr1", "trainer.resume_mode=disable")) == []
    assert check_resume(good(machine, "samr1", "trainer.n_gpus_per_node=8")) == []
    assert check_resume(good(machine, "samr1", f"trainer.default_local_dir={machine / 'fresh'}")) == []
    resume_path = f"trainer.resume_from_path={machine / 'checkpoints' / 'global_step_50'}"
    assert check_resume(good(machine, "samr1", "trainer.resume_mode=resume_path", resume_path)) != []


def test_checkpoint_names_are_verls():
    import inspect

    from verl.utils.checkpoint.checkpoint_manager import get_checkpoint_tracker_filename
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

    assert Path(get_checkpoint_tracker_filename("/ckpt")).name == TRACKER
    assert 'f"model_world_size_{self.world_size}_rank_{self.rank}.pt"' in inspect.getsource(FSDPCheckpointManager)


# Hub ids (item 12): never a network call.


def cache_snapshot(cache: Path, repo_id: str, filename: str) -> None:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / filename).write_text("{}")


def test_a_hub_id_needs_the_local_cache_online_or_not(machine, monkeypatch):
    """Online, every worker would download an uncached hub id as it starts; offline none could."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(machine / "hub"))
    config = good(machine, "samr1", f"actor_rollout_ref.model.path={HUB_MODEL}")
    (online,) = check_model(config)
    assert f"hf download {HUB_MODEL}" in online and "HF_HUB_OFFLINE" not in online
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (error,) = check_model(config)
    assert f"hf download {HUB_MODEL}" in error and "HF_HUB_OFFLINE is set" in error
    assert "actor_rollout_ref.model.path=" in error
    cache_snapshot(machine / "hub", HUB_MODEL, "config.json")
    assert check_model(config) == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert check_model(config) == []
    sam = good(machine, "samr1", "reward_server.engine.checkpoint=facebook/sam2.1-hiera-large")
    assert "reward_server.engine.checkpoint" in check_sam_checkpoint(sam)[0]
    cache_snapshot(machine / "hub", "facebook/sam2.1-hiera-large", "sam2.1_hiera_large.pt")
    assert check_sam_checkpoint(sam) == []
    # The box-only segmenter loads nothing: no checkpoint is asked for, not even a missing one.
    missing = "reward_server.engine.checkpoint=null"
    assert "no SAM2 checkpoint" in check_sam_checkpoint(good(machine, "samr1", missing))[0]
    assert check_sam_checkpoint(good(machine, "samr1", "reward_server=box", missing)) == []


def test_scripted_answers_are_for_the_cpu_smoke_run_only(machine):
    scripted = "+actor_rollout_ref.rollout.engine_kwargs.hf_cpu.scripted_every=2"
    (error,) = preflight(good(machine, "samr1", scripted), available_gpus=8)
    assert fixed_by(error) == ["actor_rollout_ref.rollout.engine_kwargs.hf_cpu.scripted_every=0"]
    assert preflight(good(machine, "samr1", scripted, "trainer.device=cpu"), available_gpus=8) == []


# The SAM2 pool's devices, after it started (item 1).


def test_an_auto_sam2_engine_on_the_cpu_fails_a_cuda_run():
    config = compose("samr1")
    (error,) = check_pool_devices(config, [{"name": "sam2_reward-0", "device": "cpu"}])
    assert "sam2_reward-0" in error and "reward_server.engine.device=cpu" in error
    assert check_pool_devices(config, [{"name": "sam2_reward-0", "device": "cuda:0"}]) == []
    assert check_pool_devices(compose("samr1", "reward_server=tiny_cpu"), [{"name": "a", "device": "cpu"}]) == []


def test_qwen3_vl_images_are_counted_with_its_32_pixel_tokens_from_its_directory_or_the_hub_cache(
    tiny_qwen3_path, tmp_path, monkeypatch
):
    import shutil

    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen3_path)
    image = Image.fromarray(np.zeros((840, 840, 3), np.uint8))
    ids = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image])["input_ids"][0]
    # 840 is no multiple of 32: Qwen3-VL's processor resizes to 832x832, 26 x 26 tokens.
    assert list(ids).count(processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")) == 26 * 26
    assert pf.image_tokens(tiny_qwen3_path) == 26 * 26
    # A hub id is read from the Hugging Face cache's snapshot, as every worker will load it.
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen3-VL-8B-Instruct" / "snapshots" / "0"
    shutil.copytree(tiny_qwen3_path, snapshot)
    (tmp_path / "hub" / "models--Qwen--Qwen3-VL-8B-Instruct" / "refs").mkdir()
    (tmp_path / "hub" / "models--Qwen--Qwen3-VL-8B-Instruct" / "refs" / "main").write_text("0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    assert pf.image_tokens("Qwen/Qwen3-VL-8B-Instruct") == 26 * 26
    assert pf.image_tokens("Qwen/Qwen2.5-VL-7B-Instruct") == IMAGE_TOKENS  # not cached: taken to be Qwen2.5-VL's


def test_a_model_family_without_a_known_coordinate_convention_stops_the_run(machine, tiny_qwen_path, tmp_path):
    import shutil

    other = tmp_path / "llava"
    shutil.copytree(tiny_qwen_path, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "llava_next"}))
    (error,) = check_model(good(machine, "samr1", f"actor_rollout_ref.model.path={other}"))
    assert "'llava_next'" in error and "coordinate convention" in error
    assert check_model(good(machine, "samr1", f"actor_rollout_ref.model.path={tiny_qwen_path}")) == []
