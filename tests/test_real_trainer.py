"""SAM-Veteran through verl's real trainer on the CPU: one launch of ``make smoke``'s command, shared by the tests.

The recipe's entry point with ``+smoke=cpu`` on the smoke inputs (``recipe.smoke.command``) for 2 steps with a
checkpoint after each: every task loop, dynamic sampling and the tiny SAM2 in the reward, a gallery every step. It
runs with ``policy_updates=updates_4``, so it also shows the clip bounds acting. It trains the tiny Qwen3-VL
(``make smoke ARGS="--base qwen3_vl"``: 0-1000 coordinates, its template, 32-pixel image tokens), so CI runs each
base model family through the trainer once: SAM-R1's run is its killed-and-resumed one on Qwen2.5-VL in
test_learning.py, which also shows the resume, the on-policy ratio of 1 and ``make eval-checkpoints``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from recipe.smoke import PROMPTS, Launch, command, launch, summary

from support.trainer_runs import (
    assert_checkpoints_hold_model_optimizer_and_data_state,
    assert_gallery_shows_what_the_reward_computed,
    printed_steps,
)

# The first test runs it: about 5 minutes on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

RECIPE = "veteran"
BASE = "qwen3_vl"
STEPS = 2
OVERRIDES = [
    # The CPU preset draws no gallery; this run draws one every step, with TensorBoard beside verl's metrics file.
    "samrl.gallery.every_n_steps=1",
    "trainer.logger=[console,file,tensorboard]",
    # 4 passes over each batch; lr 0.05 moves the tiny random model far within one, so from the second pass some
    # token's ratio leaves [1 - 0.2, 1 + 0.3].
    "policy_updates=updates_4",
    "actor_rollout_ref.actor.optim.lr=0.05",
]


@pytest.fixture(scope="session")
def veteran_run(tmp_path_factory) -> tuple[Launch, dict[int, dict], Path]:
    """The launch, its steps by number and its output folder."""
    from data_prep.smoke import build_smoke_inputs

    out = tmp_path_factory.mktemp("smoke_veteran")
    inputs = build_smoke_inputs(out, RECIPE, PROMPTS[RECIPE], base=BASE)
    run_dir = out / "run"
    run_dir.mkdir()
    argv = command(RECIPE, inputs.train_files, inputs.model, run_dir, STEPS, OVERRIDES)
    done = launch(argv, run_dir / "train.log", {**os.environ, "VERL_PLATFORM": "cpu"})
    assert done.returncode == 0, done.output[-6000:]
    return done, {step["step"]: step["data"] for step in done.steps}, run_dir


def test_verl_prints_every_step_from_the_task_runner(veteran_run):
    done, steps, _ = veteran_run
    assert printed_steps(done.output) == sorted(steps) == [1, 2]


def test_the_smoke_line_counts_the_reward_metrics_and_sam2_calls(veteran_run):
    done, _, run_dir = veteran_run
    line = summary(RECIPE, [done], run_dir)
    match = re.fullmatch(
        rf"smoke: recipe={RECIPE} trainer=verl steps=2 resumed_from=0 checkpoints=2 "
        r"reward_metrics=(\d+) sam_calls=(\d+)",
        line,
    )
    assert match, line
    assert int(match.group(1)) >= 5 and int(match.group(2)) > 0


def test_checkpoints_hold_model_optimizer_and_data_state(veteran_run):
    assert_checkpoints_hold_model_optimizer_and_data_state(veteran_run[2], [1, 2])


def test_every_step_trains_on_varying_rewards(veteran_run):
    for step, metrics in veteran_run[1].items():
        rewards = {key for key in metrics if key.startswith("reward/")}
        assert {"reward/score/mean", "reward/failure/none"} <= rewards, (step, sorted(rewards))
        assert metrics["actor/grad_norm"] > 0.0 and metrics["actor/pg_loss"] != 0.0, step
        # verl's own scores: the scripted answers score differently from the generated ones.
        assert metrics["critic/score/max"] > metrics["critic/score/min"], step


def test_every_update_moves_the_policy(veteran_run):
    """The actor moves visibly away from the reference (KL > 0 in every step's updates). Whether the rollout samples
    the moved policy cannot be told on the random model (every token is about 1e-5 likely, so a rollout that never
    receives the weights is as close to the actor); tests/test_learning.py tells it on a warm-started one."""
    for step, metrics in veteran_run[1].items():
        assert metrics["actor/kl_loss"] > 1e-4, step


def test_several_policy_updates_make_the_clip_bounds_act(veteran_run):
    """policy_updates=updates_4: from the second pass over the batch the ratio leaves the clip range (the on-policy
    runs of test_learning.py show the other side: one pass, ratio 1, nothing clipped)."""
    for step, metrics in veteran_run[1].items():
        assert metrics["actor/pg_clipfrac"] > 0.0 and metrics["actor/ppo_kl"] != 0.0, step


def test_veteran_runs_every_task_loop_with_dynamic_sampling(veteran_run):
    for step, metrics in veteran_run[1].items():
        tasks = {key.removeprefix("reward/task/") for key in metrics if key.startswith("reward/task/")}
        assert tasks == {"grounding", "mask_comprehension", "auxiliary", "workflow"}, step
        assert metrics["reward/ds_attempts/mean"] >= 1.0 and metrics["reward/ds_generated/mean"] >= 2.0, step


def test_every_step_draws_a_gallery_of_what_the_reward_computed(veteran_run):
    _, steps, run_dir = veteran_run
    assert_gallery_shows_what_the_reward_computed(RECIPE, run_dir, steps)
