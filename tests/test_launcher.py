"""The launcher hands Ray's start to verl's ``run_ppo``, so the settings verl derives from the config reach workers."""

import json
import os

import pytest
import ray

from recipe.verl_runtime import launcher
from recipe.verl_runtime.compose import compose_recipe

pytestmark = pytest.mark.slow


def _probe_runner(report_path: str):
    """A TaskRunner that records what verl's environment settings look like in itself and in a task it starts."""
    keys = ("VERL_FULL_DETERMINISM", "VLLM_BATCH_INVARIANT", "PYTHONHASHSEED", "TENSORBOARD_DIR", "VERL_PLATFORM")

    @ray.remote
    class ProbeRunner:
        def run(self, config) -> None:
            @ray.remote
            def worker_env() -> dict:
                return {key: os.environ.get(key) for key in keys}

            report = {
                "runner": {key: os.environ.get(key) for key in keys},
                "worker": ray.get(worker_env.remote()),
                "gpus": ray.cluster_resources().get("GPU", 0),
            }
            with open(report_path, "w") as file:
                json.dump(report, file)

    return ProbeRunner


def test_full_determinism_reaches_every_worker(monkeypatch, tmp_path, tiny_qwen_path, samr1_parquet):
    report = tmp_path / "report.json"
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    monkeypatch.setattr(launcher, "_task_runner_class", lambda: _probe_runner(str(report)))
    config = compose_recipe(
        "samr1",
        [
            "+smoke=cpu",
            f"data.train_files={samr1_parquet}",
            f"actor_rollout_ref.model.path={tiny_qwen_path}",
            f"samrl.output_dir={tmp_path / 'run'}",
            "actor_rollout_ref.rollout.full_determinism=true",
            "actor_rollout_ref.rollout.seed=7",
            "ray_kwargs.ray_init.num_cpus=2",
        ],
    )
    try:
        launcher.launch(config)
    finally:
        ray.shutdown()
        for key in ("VERL_FULL_DETERMINISM", "VLLM_BATCH_INVARIANT", "PYTHONHASHSEED"):
            os.environ.pop(key, None)  # run_ppo sets them in this process too
    seen = json.loads(report.read_text())
    for where in ("runner", "worker"):
        assert seen[where]["VERL_FULL_DETERMINISM"] == "1" and seen[where]["VLLM_BATCH_INVARIANT"] == "1"
        assert seen[where]["PYTHONHASHSEED"] == "7"
        assert seen[where]["VERL_PLATFORM"] == "cpu"
        assert seen[where]["TENSORBOARD_DIR"] == str(tmp_path / "run" / "tensorboard")
    assert seen["gpus"] == 1  # the CPU platform's virtual GPU, one per verl worker


@pytest.mark.parametrize(("recipe", "overrides"), [("samr1", []), ("veteran", ["data.max_response_length=5216"])])
def test_vllm_is_sized_for_the_runs_longest_sequence_not_the_models_context(recipe, overrides):
    """verl would hand vLLM Qwen2.5-VL's 128,000 positions; the run's sequences are prompt plus response."""
    config = compose_recipe(recipe, overrides)
    assert config.actor_rollout_ref.rollout.max_model_len is None  # what verl replaces by max_position_embeddings
    launcher.size_rollout_context(config)
    longest = config.data.max_prompt_length + config.data.max_response_length
    assert config.actor_rollout_ref.rollout.max_model_len == longest

    chosen = compose_recipe(recipe, [*overrides, "actor_rollout_ref.rollout.max_model_len=8192"])
    launcher.size_rollout_context(chosen)
    assert chosen.actor_rollout_ref.rollout.max_model_len == 8192  # a user's own value stays
