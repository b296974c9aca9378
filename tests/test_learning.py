"""Training improves the policy, controls that must not learn do not, and a killed run is the uninterrupted run.

Each recipe's warm-started tiny model (``bench.warm_start``) is trained with the recipe's own entry point on the CPU
(``bench.learn``), every run sampling under ``rollout.full_determinism``, so runs that share a step share its random
draws. Two tiers:

- In ``make test`` (CI): SAM-R1's first 3 steps, the same 3 steps with the rollout's weight sync off (the control
  whose mismatch the trainer must warn about), and the run killed twice (while it writes its step-2 checkpoint,
  then in the middle of step 3) and resumed, which must be the uninterrupted run sample for sample. The killed run
  is also the project's SAM-R1 smoke run through verl's trainer (checkpoints, resume, gallery,
  ``make eval-checkpoints``) and its fault test: its last launch loses its SAM2 actor in the middle of a step.
- With ``pytest --learning`` (``make test-learn``, about 45 more minutes): both recipes' 14-step learning runs, whose
  score must rise by the recipe's margin over their first steps and over a frozen-rollout control, SAM-Veteran's
  frozen-rollout control, and both recipes' negated-reward controls.

Each launch is one ``python -m recipe.<recipe>.main``; the runs are shared by the tests that read them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import ray
from omegaconf import OmegaConf

from bench.learn import CHECKS, FROZEN, STEPS, LearnSetup, learn_line, negated, prepare, train, window_mean
from bench.processes import kill_tree
from recipe.smoke import Launch, logged_steps, metrics_files
from recipe.verl_runtime.checkpoints import COMPLETE_MARKER, TRACKER
from reward_server.config import PoolConfig
from reward_server.pool import actor_name

from support.trainer_runs import (
    assert_checkpoints_hold_model_optimizer_and_data_state,
    assert_eval_checkpoints_evaluates_every_step,
    assert_gallery_shows_what_the_reward_computed,
    printed_steps,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
learning_tier = pytest.mark.learning

START_STEPS = 3
"""The CI runs' length: without weight sync the rollout has drifted past the mismatch bound by step 3, and with the
advantage flipped the well-formed answers are gone by then (bench-learn's runs)."""
CONTROL_STEPS = 6
"""The learning tier's frozen control: its window is its last 3 steps."""
VARIANTS = {
    "start": (START_STEPS, False, False),
    "frozen_start": (START_STEPS, True, False),
    "negated_start": (START_STEPS, False, True),
    "learn": (STEPS, False, False),
    "frozen": (CONTROL_STEPS, True, False),
}
"""Each run's steps, whether its rollout's weight sync is off, whether its reward is negated."""
SCORE = "critic/score/mean"
WELL_FORMED = "reward/well_formed/mean"
ROLLOUTS = "rollouts"
"""verl's per-step dump of every sample (``trainer.rollout_data_dir``), under each run's folder."""

_SETUPS: dict[str, LearnSetup] = {}
_RUNS: dict[tuple[str, str], Launch] = {}


def dump_rollouts(run_dir: Path) -> str:
    return f"trainer.rollout_data_dir={run_dir / ROLLOUTS}"


def setup_of(recipe: str, tmp_path_factory) -> LearnSetup:
    if recipe not in _SETUPS:
        _SETUPS[recipe] = prepare(recipe, tmp_path_factory.mktemp(f"learn_{recipe}"))
    return _SETUPS[recipe]


@pytest.fixture(scope="session")
def learning(tmp_path_factory):
    """``learning(recipe, variant)``: the launch of ``variant`` of ``recipe``'s learning check, run once."""

    def run(recipe: str, variant: str) -> Launch:
        if (recipe, variant) not in _RUNS:
            setup = setup_of(recipe, tmp_path_factory)
            run_dir = setup.model.parent / variant
            steps, frozen, negate = VARIANTS[variant]
            extra = [*(FROZEN if frozen else []), *(negated(recipe, run_dir) if negate else [])]
            _RUNS[recipe, variant] = train(
                setup, run_dir, steps, ["trainer.save_freq=-1", dump_rollouts(run_dir), *extra]
            )
        return _RUNS[recipe, variant]

    return run


def series(launch: Launch, key: str) -> list[float]:
    return [step["data"][key] for step in sorted(launch.steps, key=lambda step: step["step"])]


@learning_tier
@pytest.mark.parametrize("recipe", list(CHECKS))
def test_training_raises_the_score_past_chance_and_past_a_frozen_rollout(learning, recipe):
    learned, frozen = learning(recipe, "learn"), learning(recipe, "frozen")
    print(learn_line(recipe, learned, frozen))
    assert [step["step"] for step in learned.steps] == list(range(1, STEPS + 1))
    early = window_mean(learned.steps, SCORE, last=False)
    late = window_mean(learned.steps, SCORE, last=True)
    frozen_late = window_mean(frozen.steps, SCORE, last=True)
    margin = CHECKS[recipe].margin
    assert late - early > margin, series(learned, SCORE)
    assert late - frozen_late > margin, (series(learned, SCORE), series(frozen, SCORE))
    # What rose is the share of the model's well-formed answers, not only the score.
    assert window_mean(learned.steps, WELL_FORMED, last=True) > window_mean(learned.steps, WELL_FORMED, last=False)


@learning_tier
def test_samr1_learns_the_tiered_iou_reward(learning):
    """The box-only segmenter makes the IoU follow the answer: the right box's tier is learned, not only the format."""
    learned = learning("samr1", "learn")
    tiered = "reward/tiered/mean"
    assert window_mean(learned.steps, tiered, last=True) > window_mean(learned.steps, tiered, last=False) + 1.0


CPU_BOUND = OmegaConf.load(ROOT / "conf" / "smoke" / "cpu.yaml").samrl.rollout_check.max_probs_diff
"""The largest token's difference past which ``+smoke=cpu`` runs warn."""


def assert_rollout_follows_the_actor(synced: Launch, frozen: Launch) -> None:
    """With weight sync the rollout's token probabilities are the actor's (fp32 both: float noise); without it they
    drift apart as the actor trains, and every step past the bound is warned about and counted."""
    followed = series(synced, "training/rollout_probs_diff_max")
    assert max(followed) < CPU_BOUND
    assert series(synced, "training/rollout_mismatch_steps")[-1] == 0
    assert "rollout and actor disagree" not in synced.output
    drift = series(frozen, "training/rollout_probs_diff_max")
    # Step 1 samples the weights both sides start from; after the first update the actor has moved away, by orders
    # of magnitude more than float noise.
    assert drift[0] < CPU_BOUND < max(drift[1:]), drift
    assert max(drift[1:]) > 100 * max(followed), (drift, followed)
    assert series(frozen, "training/rollout_mismatch_steps")[-1] > 0
    assert "rollout and actor disagree" in frozen.output


def test_samr1_rollout_samples_the_policy_being_trained(learning):
    assert_rollout_follows_the_actor(learning("samr1", "start"), learning("samr1", "frozen_start"))


@learning_tier
def test_veteran_rollout_samples_the_policy_being_trained(learning):
    assert_rollout_follows_the_actor(learning("veteran", "learn"), learning("veteran", "frozen"))


COMPUTED = {
    "samr1": ("reward/tiered/mean", "reward/reasoning_format/mean", "reward/segmentation_format/mean"),
    "veteran": ("reward/score/mean",),
}
"""What each recipe's reward computed, as logged: SAM-R1's components (its negated function logs the negated score),
SAM-Veteran's score (its negated loops negate only what verl trains on)."""
KEPT = {"samr1": "start", "veteran": "learn"}
"""The run with the reward's sign kept whose first steps a negated run repeats."""
BIT_REPRODUCIBLE = {"samr1"}
"""Recipes whose runs draw the same samples at a step they share. SAM-Veteran's grounding and workflow requests share
a prompt, and the order in which they reach the CPU rollout decides which seed each gets."""


@learning_tier
@pytest.mark.parametrize("recipe", list(CHECKS))
def test_a_flipped_advantage_unlearns(learning, recipe):
    """The reward negated flips every advantage: within 3 steps the run drives the well-formed answers out, while
    the same 3 steps with the reward's sign kept keep them (SAM-R1: from the same random draws)."""
    negated, kept = learning(recipe, "negated_start"), learning(recipe, KEPT[recipe])
    # verl trains on the negated sum of what the reward computed.
    for step in negated.steps:
        computed = sum(step["data"][key] for key in COMPUTED[recipe])
        assert step["data"][SCORE] == pytest.approx(-computed, abs=1e-6)
    flipped, same = series(negated, WELL_FORMED), series(kept, WELL_FORMED)[:START_STEPS]
    if recipe in BIT_REPRODUCIBLE:  # step 1 samples the warm start in both runs with the same seeds
        assert flipped[0] == same[0], (flipped, same)
    assert flipped[-1] < 0.2 and flipped[-1] < same[-1] - 0.3, (flipped, same)


# ------------------------------------------------------------------ a run killed twice is the uninterrupted run

KILLED_STEPS = START_STEPS
GALLERY = ["samrl.gallery.every_n_steps=1", "trainer.logger=[console,file,tensorboard]"]
"""The killed run also draws a gallery every step, with TensorBoard beside verl's metrics file."""


# Unbuffered, as on a terminal: the driver prints what Ray's workers print; a SIGKILL drops a file buffer's tail.
WATCHED_ENV = {"VERL_PLATFORM": "cpu", "PYTHONUNBUFFERED": "1"}
"""What a launch that the test interferes with runs under, beside this process's environment."""


def launch_and_kill(argv: list[str], run_dir: Path, log: Path, kill_when: Callable[[list[dict]], bool]) -> Launch:
    """Runs ``argv`` and SIGKILLs it with every process it started (driver, Ray, workers) as soon as
    ``kill_when(steps logged so far)`` holds; fails if the launch ends first."""
    before = metrics_files(run_dir)
    with log.open("w") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **WATCHED_ENV})
        deadline = time.monotonic() + 1200
        try:
            while not kill_when(logged_steps(run_dir, before)):
                assert process.poll() is None, f"ended (exit {process.returncode}) before the kill; log in {log}"
                assert time.monotonic() < deadline, f"no kill point within 1200 s; log in {log}"
                time.sleep(0.01)
        except BaseException:
            kill_tree(process.pid)  # a launch left running would hold Ray's ports for the next test's launch
            raise
        alive = kill_tree(process.pid)
        assert not alive, f"processes of the killed launch survive: {alive}"
        process.wait()
    return Launch(argv, process.returncode, log.read_text(), logged_steps(run_dir, before))


SAM_ACTOR = actor_name(PoolConfig(), 0)
"""The reward pool's first actor, its only one in these runs (the box segmenter)."""


def launch_and_crash_sam(argv: list[str], log: Path) -> tuple[Launch, int | None]:
    """Runs ``argv`` to its end, killing its SAM2 actor once the training loop has started, as a crash would (Ray
    restarts it); returns the launch and the killed actor's pid (None when the loop never started)."""
    before = metrics_files(log.parent)
    killed = None
    assert not ray.is_initialized()
    with log.open("w") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **WATCHED_ENV})
        try:
            while process.poll() is None:
                if killed is None and "Training Progress" in log.read_text():  # the step began; no reward yet
                    # This process joins the trainer's local Ray (the newest on this machine) to reach the actor.
                    ray.init(address="auto", log_to_driver=False)
                    actor = ray.get_actor(SAM_ACTOR, namespace="samrl")
                    killed = ray.get(actor.health.remote())["pid"]
                    ray.kill(actor, no_restart=False)
                    ray.shutdown()
                time.sleep(0.05)
        finally:
            ray.shutdown()
            process.wait()
    return Launch(argv, process.returncode, log.read_text(), logged_steps(log.parent, before)), killed


@pytest.fixture(scope="session")
def killed_twice(tmp_path_factory):
    """SAM-R1's first 3 steps with a checkpoint after each: killed while it writes global_step_2, relaunched (resumes
    from step 1), killed 5 s into step 3, relaunched (resumes from step 2) to the end, losing its SAM2 actor once
    step 3 has begun."""
    setup = setup_of("samr1", tmp_path_factory)
    run_dir = setup.model.parent / "killed"
    run_dir.mkdir()
    checkpoints = run_dir / "checkpoints"
    saving = ["trainer.save_freq=1", dump_rollouts(run_dir), *GALLERY]
    argv = setup.command(run_dir, KILLED_STEPS, saving)
    writing = launch_and_kill(argv, run_dir, run_dir / "1.log", lambda _: (checkpoints / "global_step_2").is_dir())
    after_first = {
        "tracker": (checkpoints / TRACKER).read_text(),
        "partial": not (checkpoints / "global_step_2" / COMPLETE_MARKER).exists(),
    }
    seen: dict[str, float] = {}

    def into_step_3(steps: list[dict]) -> bool:
        if any(step["step"] == 2 for step in steps):
            seen.setdefault("at", time.monotonic())
        return "at" in seen and time.monotonic() - seen["at"] > 5

    stepping = launch_and_kill(argv, run_dir, run_dir / "2.log", into_step_3)
    after_second = {"tracker": (checkpoints / TRACKER).read_text()}
    finished, sam_pid = launch_and_crash_sam(argv, run_dir / "3.log")
    assert finished.returncode == 0, finished.output[-6000:]
    return {
        "run_dir": run_dir,
        "launches": {"writing": writing, "stepping": stepping, "finished": finished},
        "after_first": after_first,
        "after_second": after_second,
        "sam_pid": sam_pid,
    }


def test_a_kill_while_writing_a_checkpoint_resumes_from_the_one_before(killed_twice):
    writing, stepping = killed_twice["launches"]["writing"], killed_twice["launches"]["stepping"]
    assert [step["step"] for step in writing.steps] == [1]
    # The kill came while step 2 was written (verl logs a step after its checkpoint): its folder is partial.
    assert killed_twice["after_first"] == {"tracker": "1", "partial": True}
    assert "Resuming from" not in writing.output
    assert "Resuming from" in stepping.output and "global_step_1, setting global step to 1" in stepping.output
    assert [step["step"] for step in stepping.steps] == [2]


def test_a_kill_in_the_middle_of_a_step_resumes_from_the_last_checkpoint(killed_twice):
    finished = killed_twice["launches"]["finished"]
    assert killed_twice["after_second"] == {"tracker": "2"}
    assert "global_step_2, setting global step to 2" in finished.output
    assert [step["step"] for step in finished.steps] == [3]


def test_a_sam2_actor_killed_during_a_step_restarts_and_every_reward_is_scored(killed_twice, learning):
    """The pool restarts the actor and the client resends what it was serving: step 3 scores every answer, and as the
    uninterrupted run did (the box segmenter draws the same mask after a restart)."""
    assert killed_twice["sam_pid"] is not None, "step 3 never started"
    (step,) = killed_twice["launches"]["finished"].steps
    reference = {record["step"]: record["data"] for record in learning("samr1", "start").steps}[3]
    assert step["step"] == 3 and step["data"]["sam/restarts"] == 1.0
    assert not [key for key in step["data"] if key.startswith("reward/failure/sam_")]
    assert step["data"]["sam/requests"] >= 1
    assert step["data"]["reward/sam_called/mean"] == reference["reward/sam_called/mean"] > 0


def test_the_killed_run_saw_every_sample_once_and_the_same_as_the_uninterrupted_run(killed_twice, learning):
    """Each step is logged once, its dumped samples are the batch's (1 prompt x n), and they, their scores and the
    step's losses are the uninterrupted run's: full determinism makes a resume the same run, a SAM2 crash included."""
    reference = learning("samr1", "start")
    killed_dir = killed_twice["run_dir"]
    reference_dir = killed_dir.parent / "start"
    steps = [step for launch in killed_twice["launches"].values() for step in launch.steps]
    assert sorted(step["step"] for step in steps) == [1, 2, 3]
    n = int(next(o for o in CHECKS["samr1"].overrides if o.startswith("actor_rollout_ref.rollout.n=")).split("=")[1])
    by_step = {step["step"]: step["data"] for step in reference.steps}
    for step in steps:
        number = step["step"]
        samples = [json.loads(line) for line in (killed_dir / ROLLOUTS / f"{number}.jsonl").read_text().splitlines()]
        expected = [
            json.loads(line) for line in (reference_dir / ROLLOUTS / f"{number}.jsonl").read_text().splitlines()
        ]
        assert len(samples) == n
        assert sorted((s["output"], s["score"]) for s in samples) == sorted((s["output"], s["score"]) for s in expected)
        for key in (SCORE, "reward/well_formed/mean", "reward/tiered/mean"):
            assert step["data"][key] == by_step[number][key], (number, key)
        # The update itself may sum in another order after a restart: fp32 rounding, measured 3e-7 relative at most
        # (grad norm, KL); a wrong weight, optimizer state or sample would move them by far more than 1e-5.
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/kl_loss"):
            assert step["data"][key] == pytest.approx(by_step[number][key], rel=1e-5, abs=1e-8), (number, key)
    assert (killed_dir / "checkpoints" / "global_step_3" / COMPLETE_MARKER).is_file()


# ------------------------------------------------------------------ the killed run is also SAM-R1's smoke run


def killed_steps(killed_twice) -> dict[int, dict]:
    return {step["step"]: step["data"] for launch in killed_twice["launches"].values() for step in launch.steps}


def test_verl_prints_every_step_from_the_task_runner(killed_twice):
    launches = killed_twice["launches"]
    assert [printed_steps(launches[name].output) for name in ("writing", "stepping", "finished")] == [[1], [2], [3]]


def test_checkpoints_hold_model_optimizer_and_data_state(killed_twice):
    assert_checkpoints_hold_model_optimizer_and_data_state(killed_twice["run_dir"], [1, 2, 3])


def test_a_resumed_launch_carries_the_trained_policy_and_the_data_state(killed_twice):
    finished = killed_twice["launches"]["finished"].output
    assert "No dataloader state found" not in finished and "Training from scratch" not in finished
    steps = killed_steps(killed_twice)
    # A fresh actor equals the reference (KL 0, as at step 1); a resumed one carries the steps trained before.
    assert steps[1]["actor/kl_loss"] == 0.0
    assert steps[2]["actor/kl_loss"] > 0.0 and steps[3]["actor/kl_loss"] > 0.0


def test_every_step_trains_on_the_papers_reward_components(killed_twice):
    for step, metrics in killed_steps(killed_twice).items():
        rewards = {key.removeprefix("reward/").removesuffix("/mean") for key in metrics if key.startswith("reward/")}
        components = {"score", "iou", "tiered", "reasoning_format", "segmentation_format", "sam_called"}
        assert components <= rewards and "failure/none" in rewards, (step, sorted(rewards))
        assert metrics["actor/grad_norm"] > 0.0 and metrics["actor/pg_loss"] != 0.0, step
        assert metrics["critic/score/max"] > metrics["critic/score/min"], step
        # One update per step (policy_updates=on_policy): old log-probs are the current policy's, the ratio is 1.
        assert metrics["actor/pg_clipfrac"] == 0.0, step


def test_every_step_draws_a_gallery_of_what_the_reward_computed(killed_twice):
    assert_gallery_shows_what_the_reward_computed("samr1", killed_twice["run_dir"], killed_steps(killed_twice))


def test_eval_checkpoints_evaluates_every_step_of_the_run(killed_twice, tmp_path):
    assert_eval_checkpoints_evaluates_every_step(killed_twice["run_dir"], [1, 2, 3], tmp_path)
