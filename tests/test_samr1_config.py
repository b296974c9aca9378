"""The SAM-R1 Hydra config, its ablation presets, preflight, the entry point and the reward-metrics trainer."""

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from recipe.verl_runtime.compose import compose_recipe
from recipe.verl_runtime.preflight import check_gpus, preflight
from recipe.verl_runtime.trainer import RewardMetricsTrainer, reward_component_metrics
from reward_server.config import server_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def compose_samr1(*overrides: str):
    return compose_recipe("samr1", list(overrides))


def test_the_config_is_the_papers_and_passes_verls_validation():
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    config = compose_samr1()
    actor = config.actor_rollout_ref.actor
    assert config.algorithm.adv_estimator == "grpo" and config.actor_rollout_ref.rollout.n == 8
    assert actor.optim.lr == 1e-6 and (actor.clip_ratio_low, actor.clip_ratio_high) == (0.2, 0.3)
    assert actor.loss_agg_mode == "token-mean" and actor.policy_loss.loss_mode == "samr1"
    assert actor.use_kl_loss and actor.kl_loss_type == "low_var_kl" and actor.kl_loss_coef == 0.005
    assert actor.ppo_mini_batch_size == config.data.train_batch_size  # one mini-batch: token mean over the batch
    assert config.reward.reward_manager.name == "sam_image"
    assert config.trainer.logger == ["console", "tensorboard"]
    resolved = OmegaConf.to_container(config, resolve=True)
    kwargs = resolved["reward"]["custom_reward_function"]["reward_kwargs"]
    assert kwargs["tiers"] == [[0.8, 4.0], [0.7, 3.0], [0.5, 2.0]]
    assert server_config(kwargs["reward_server"]).engine.model == "sam2.1_hiera_l"
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))


@pytest.mark.parametrize(
    ("preset", "key", "value"),
    [
        ("threshold_0.5", "reward.custom_reward_function.reward_kwargs.tiers", [[0.5, 4.0]]),
        ("threshold_0.7", "reward.custom_reward_function.reward_kwargs.tiers", [[0.7, 4.0]]),
        ("threshold_0.8", "reward.custom_reward_function.reward_kwargs.tiers", [[0.8, 4.0]]),
        ("seq_level", "actor_rollout_ref.actor.loss_agg_mode", "seq-mean-token-mean"),
        ("symmetric_clip", "actor_rollout_ref.actor.clip_ratio_high", 0.2),
        ("no_kl", "actor_rollout_ref.actor.use_kl_loss", False),
        ("data_10k", "data.train_files", "data/samr1/refcocog_train_10k.parquet"),
    ],
)
def test_ablation_presets_change_exactly_their_key(preset, key, value):
    """Each preset maps to one row of the paper's Tables 3, 4 and 6, or to Appendix A.1."""
    # Unresolved, so keys that merely interpolate the changed one (critic.loss_agg_mode) do not count as changed.
    base = OmegaConf.to_container(compose_samr1(), resolve=False)
    ablated = OmegaConf.to_container(compose_samr1(f"+ablation={preset}"), resolve=False)

    def flatten(tree, prefix=""):
        if isinstance(tree, dict):
            return {k: v for name, sub in tree.items() for k, v in flatten(sub, f"{prefix}{name}.").items()}
        return {prefix[:-1]: tree}

    changed = {k for k, v in flatten(ablated).items() if flatten(base).get(k) != v}
    assert {k for k in changed if not k.startswith("hydra")} == {key}
    assert flatten(ablated)[key] == value


def test_preflight_names_what_to_fix(tmp_path):
    config = compose_samr1(f"data.train_files={tmp_path}/missing.parquet", "actor_rollout_ref.model.path=/no/model")
    errors = preflight(config, available_gpus=8)
    assert any("data.train_files" in e and "make data" in e for e in errors)
    assert any("actor_rollout_ref.model.path=" in e for e in errors)
    assert any("reward_server.engine.checkpoint=" in e for e in errors)
    assert all("\n" not in e for e in errors)


def test_preflight_checks_columns_and_gpu_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["x"]}), tmp_path / "bad.parquet")
    config = compose_samr1(f"data.train_files={tmp_path}/bad.parquet", "reward_server=tiny_cpu")
    errors = [e for e in preflight(config) if "bad.parquet" in e]
    assert len(errors) == 2  # val_files defaults to train_files
    assert all("lacks columns" in e and "images" in e for e in errors)
    assert check_gpus(compose_samr1(), 8) == []  # 7 for verl + 1 for SAM2
    (gpu_error,) = check_gpus(compose_samr1("trainer.n_gpus_per_node=8"), 8)
    assert "lower trainer.n_gpus_per_node" in gpu_error


def test_entry_point_stops_at_preflight_with_one_line_errors(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipe.samr1.main",
            f"data.train_files={tmp_path}/none.parquet",
            f"actor_rollout_ref.model.path={tmp_path}/model",
            "ray_kwargs.ray_init.num_cpus=64",  # this machine's CPU count plays no part
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("preflight: ")]
    # No model, no SAM2 checkpoint, train and val files missing, CUDA unusable, 7 + 1 GPUs wanted where there are
    # none; and a C compiler or Python.h where this machine lacks them.
    toolchain = [line for line in lines if "Triton" in line]
    assert len(lines) - len(toolchain) == 6 and len(toolchain) <= 1, done.stderr[-2000:]
    assert "torch.cuda.is_available() is false" in lines[-2 - len(toolchain)] and "0 available" in lines[-1]
    assert "Traceback" not in done.stderr


def test_trainer_runs_as_verls_sync_trainer():
    config = compose_samr1()
    trainer = RewardMetricsTrainer(config)
    assert trainer.trainer_mode == "sync" and config.trainer.v1.trainer_mode == "sync"


def test_reward_component_metrics():
    fields = [
        {"reward_extra_info": {"score": 6.0, "iou": 0.9, "failure": "", "failure_detail": ""}},
        {"reward_extra_info": {"score": -2.0, "iou": 0.0, "failure": "bbox", "failure_detail": "bad"}},
        {"reward_extra_info": {"score": 2.0, "iou": 0.4, "failure": "", "failure_detail": ""}},
        None,
    ]
    metrics = reward_component_metrics(fields)
    assert metrics["reward/score/mean"] == pytest.approx(2.0)
    assert metrics["reward/iou/mean"] == pytest.approx(1.3 / 3)
    assert metrics["reward/failure/none"] == pytest.approx(2 / 3) and metrics["reward/failure/bbox"] == pytest.approx(
        1 / 3
    )
    assert "reward/failure_detail/mean" not in metrics
    assert reward_component_metrics([]) == {}


@pytest.mark.parametrize("recipe", ["samr1", "veteran"])
def test_policy_updates_per_step_is_one_knob_that_verl_validates(recipe):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from recipe.verl_runtime.compose import compose_recipe

    for preset, updates in (("on_policy", 1), ("updates_2", 2), ("updates_4", 4)):
        config = compose_recipe(recipe, [f"policy_updates={preset}"])
        actor = config.actor_rollout_ref.actor
        # verl takes one optimizer step per mini-batch per epoch: the whole batch as one mini-batch, `updates` times.
        assert actor.ppo_mini_batch_size == config.data.train_batch_size and actor.ppo_epochs == updates
        validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert compose_recipe(recipe, []).actor_rollout_ref.actor.ppo_epochs == 1  # the papers' default


@pytest.mark.parametrize("preset", ["symmetric_clip", "seq_level", "grpo_baseline"])
def test_table4_presets_compose_with_an_off_policy_schedule(preset):
    alone = compose_samr1(f"+ablation={preset}").actor_rollout_ref.actor
    both = compose_samr1(f"+ablation={preset}", "policy_updates=updates_4").actor_rollout_ref.actor
    assert both.ppo_epochs == 4
    keys = ("clip_ratio_low", "clip_ratio_high", "loss_agg_mode", "policy_loss")
    assert {key: both[key] for key in keys} == {key: alone[key] for key in keys}


def test_grpo_baseline_combines_both_table4_changes():
    actor = compose_samr1("+ablation=grpo_baseline").actor_rollout_ref.actor
    assert (actor.loss_agg_mode, actor.clip_ratio_low, actor.clip_ratio_high) == ("seq-mean-token-mean", 0.2, 0.2)


def test_cfg_job_prints_the_papers_values_where_verl_reads_them():
    done = subprocess.run(
        [sys.executable, "-m", "recipe.samr1.main", "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    config = OmegaConf.create(done.stdout)
    actor = config.actor_rollout_ref.actor
    assert actor.policy_loss.loss_mode == "samr1" and actor.clip_ratio_high == 0.3 and actor.clip_ratio_low == 0.2
    assert config.actor_rollout_ref.rollout.n == 8 and config.algorithm.adv_estimator == "grpo"
