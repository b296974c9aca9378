"""SAM-Veteran through verl's real trainer on the CPU: ``python -m recipe.smoke veteran``, run once and shared.

The run is the README's ``make smoke`` for SAM-Veteran: the recipe's entry point with ``+smoke=cpu`` for 2 steps
(a checkpoint after each), then again to step 3, resumed by verl from step 2: every task loop, dynamic sampling and
the tiny SAM2 in the reward. SAM-R1's run through the trainer is its killed-and-resumed run in test_learning.py,
which also carries what the smoke run of SAM-R1 checked (checkpoints, resume, gallery, ``make eval-checkpoints``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.trainer_runs import (
    ROOT,
    assert_checkpoints_hold_model_optimizer_and_data_state,
    assert_gallery_shows_what_the_reward_computed,
    printed_steps,
)

# The first test runs it: its two launches took 540 s on 2 cores, near the default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@dataclass
class RealRun:
    """What a recipe's smoke run left: its output, the smoke line, the per-launch logs and the logged steps."""

    stdout: str
    line: str
    launches: list[str]
    steps: dict[int, dict]
    run_dir: Path


_RUNS: dict[str, RealRun] = {}


@pytest.fixture(scope="session")
def real_run(tmp_path_factory):
    def run(recipe: str) -> RealRun:
        if recipe not in _RUNS:
            out = tmp_path_factory.mktemp(f"smoke_{recipe}")
            env = {**os.environ, "VERL_PLATFORM": "cpu"}
            command = [sys.executable, "-m", "recipe.smoke", recipe, "--out", str(out), *GALLERY]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=1500)
            assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
            run_dir = out / recipe / "run"
            launches = re.split(r"^smoke: running .*$", done.stdout, flags=re.MULTILINE)[1:]
            steps = {}
            for path in sorted((run_dir / "metrics").glob("*.jsonl")):
                for line in path.read_text().splitlines():
                    record = json.loads(line)
                    steps[record["step"]] = record["data"]
            _RUNS[recipe] = RealRun(done.stdout, done.stdout.strip().splitlines()[-1], launches, steps, run_dir)
        return _RUNS[recipe]

    return run


RECIPES = ["veteran"]
# The CPU preset draws no gallery; these runs draw one every step, with TensorBoard beside verl's metrics file.
GALLERY = ["--override", "samrl.gallery.every_n_steps=1", "--override", "trainer.logger=[console,file,tensorboard]"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_smoke_line_ends_the_run(real_run, recipe):
    run = real_run(recipe)
    expected = rf"smoke: recipe={recipe} trainer=verl steps=3 resumed_from=2 checkpoints=3 "
    match = re.fullmatch(expected + r"reward_metrics=(\d+) sam_calls=(\d+)", run.line)
    assert match, run.line
    assert int(match.group(1)) >= 5 and int(match.group(2)) > 0


@pytest.mark.parametrize("recipe", RECIPES)
def test_verl_prints_every_step_from_the_task_runner(real_run, recipe):
    run = real_run(recipe)
    assert printed_steps(run.launches[0]) == [1, 2]
    assert printed_steps(run.launches[1]) == [3]
    assert sorted(run.steps) == [1, 2, 3]


@pytest.mark.parametrize("recipe", RECIPES)
def test_checkpoints_hold_model_optimizer_and_data_state(real_run, recipe):
    assert_checkpoints_hold_model_optimizer_and_data_state(real_run(recipe).run_dir, [1, 2, 3])


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_rerun_resumes_from_step_2_with_the_trained_policy(real_run, recipe):
    run = real_run(recipe)
    resumed = run.launches[1]
    assert re.search(r"Resuming from \S+/global_step_2, setting global step to 2", resumed)
    assert "No dataloader state found" not in resumed and "Training from scratch" not in resumed
    # A fresh actor equals the reference (KL 0, as at step 1); the resumed one carries 2 steps of training.
    assert run.steps[1]["actor/kl_loss"] == 0.0
    assert run.steps[3]["actor/kl_loss"] > 0.0


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_step_trains_on_varying_rewards(real_run, recipe):
    run = real_run(recipe)
    for step, metrics in run.steps.items():
        rewards = {key for key in metrics if key.startswith("reward/")}
        assert {"reward/score/mean", "reward/failure/none"} <= rewards, (step, sorted(rewards))
        assert metrics["actor/grad_norm"] > 0.0 and metrics["actor/pg_loss"] != 0.0, step
        # verl's own scores: the scripted answers score differently from the generated ones.
        assert metrics["critic/score/max"] > metrics["critic/score/min"], step


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_update_moves_the_policy(real_run, recipe):
    """lr 1e-3 moves the policy visibly: KL to the reference > 0 after each update. Whether the rollout samples the
    moved policy cannot be told on the random model (every token is about 1e-5 likely, so a rollout that never
    receives the weights is as close to the actor); tests/test_learning.py tells it on a warm-started one."""
    run = real_run(recipe)
    for step in (2, 3):
        assert run.steps[step]["actor/kl_loss"] > 1e-4


@pytest.mark.parametrize("recipe", RECIPES)
def test_on_policy_the_clip_bounds_never_bind(real_run, recipe):
    """One update per step (policy_updates=on_policy): old log-probs are the current policy's, the ratio is 1."""
    for step, metrics in real_run(recipe).steps.items():
        assert metrics["actor/pg_clipfrac"] == 0.0, step


def test_several_policy_updates_make_the_clip_bounds_act(tmp_path):
    """policy_updates=updates_4: from the second pass over the batch the ratio leaves [1 - 0.2, 1 + 0.3]."""
    from data_prep.smoke import build_smoke_inputs
    from recipe.smoke import PROMPTS, command, launch

    inputs = build_smoke_inputs(tmp_path, "samr1", PROMPTS["samr1"])
    # lr 0.05 moves the tiny random model far within one update, so some token's ratio crosses a bound.
    extra = ["policy_updates=updates_4", "actor_rollout_ref.actor.optim.lr=0.05", "trainer.save_freq=-1"]
    argv = command("samr1", inputs.train_files, inputs.model, tmp_path / "run", 1, extra)
    done = launch(argv, tmp_path / "train.log", {**os.environ, "VERL_PLATFORM": "cpu"})
    assert done.returncode == 0, done.output[-6000:]
    (step,) = done.steps
    assert step["data"]["actor/pg_clipfrac"] > 0.0 and step["data"]["actor/ppo_kl"] != 0.0


def test_veteran_runs_every_task_loop_with_dynamic_sampling(real_run):
    run = real_run("veteran")
    for step, metrics in run.steps.items():
        tasks = {key.removeprefix("reward/task/") for key in metrics if key.startswith("reward/task/")}
        assert tasks == {"grounding", "mask_comprehension", "auxiliary", "workflow"}, step
        assert metrics["reward/ds_attempts/mean"] >= 1.0 and metrics["reward/ds_generated/mean"] >= 2.0, step


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_step_draws_a_gallery_of_what_the_reward_computed(real_run, recipe):
    run = real_run(recipe)
    assert_gallery_shows_what_the_reward_computed(recipe, run.run_dir, run.steps)
