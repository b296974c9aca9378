"""Both recipes through verl's real trainer on the CPU: ``python -m recipe.smoke``, run once per recipe and shared.

Each run is the README's ``make smoke`` for one recipe: the recipe's entry point with ``+smoke=cpu`` for 2 steps
(a checkpoint after each), then again to step 3, resumed by verl from step 2.
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

# The first test of each recipe runs it: veteran's two launches took 540 s on 2 cores (samr1's fewer), near the default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"^(?:\x1b\[\d+m)?\(SamTaskRunner pid=\d+\)(?:\x1b\[0m)? step:(\d+) - ", re.MULTILINE)


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


RECIPES = ["samr1", "veteran"]
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
    assert [int(s) for s in STEP_LINE.findall(run.launches[0])] == [1, 2]
    assert [int(s) for s in STEP_LINE.findall(run.launches[1])] == [3]
    assert sorted(run.steps) == [1, 2, 3]


@pytest.mark.parametrize("recipe", RECIPES)
def test_checkpoints_hold_model_optimizer_and_data_state(real_run, recipe):
    run = real_run(recipe)
    checkpoints = run.run_dir / "checkpoints"
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    for step in (1, 2, 3):
        folder = checkpoints / f"global_step_{step}"
        actor = folder / "actor"
        for part in ("model", "optim", "extra_state"):
            assert (actor / f"{part}_world_size_1_rank_0.pt").is_file(), (step, part)
        assert (folder / "data.pt").is_file()


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


def test_samr1_rewards_carry_the_papers_components(real_run):
    metrics = real_run("samr1").steps[1]
    for component in ("iou", "tiered", "reasoning_format", "segmentation_format", "sam_called"):
        assert f"reward/{component}/mean" in metrics


def test_veteran_runs_every_task_loop_with_dynamic_sampling(real_run):
    run = real_run("veteran")
    for step, metrics in run.steps.items():
        tasks = {key.removeprefix("reward/task/") for key in metrics if key.startswith("reward/task/")}
        assert tasks == {"grounding", "mask_comprehension", "auxiliary", "workflow"}, step
        assert metrics["reward/ds_attempts/mean"] >= 1.0 and metrics["reward/ds_generated/mean"] >= 2.0, step


def _coco(rle):
    return {"size": rle["size"], "counts": rle["counts"].encode()}


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_step_draws_a_gallery_of_what_the_reward_computed(real_run, recipe):
    """The gallery's masks are the reward's: SAM-R1's recorded mask has the reward's IoU by pycocotools, and each
    SAM-Veteran task records what it was scored on; the pictures reach TensorBoard, read back by its own reader."""
    from pycocotools import mask as mask_utils
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = real_run(recipe)
    drawn = 0
    for step, metrics in run.steps.items():
        assert metrics["gallery/errors"] == 0 and metrics["gallery/rollouts"] >= 1, step
        page_dir = run.run_dir / "gallery" / f"step_{step:06d}"
        pictures = re.findall(r'src="([^"]+\.png)"', (page_dir / "index.html").read_text())
        assert len(pictures) == metrics["gallery/rollouts"] and all((page_dir / p).is_file() for p in pictures)
        for line in (page_dir / "rollouts.jsonl").read_text().splitlines():
            rollout = json.loads(line)
            truth, reward, task = _coco(rollout["truth"]), rollout["reward"], rollout["labels"].get("task")
            masks = [s for s in rollout["steps"] if s["mask"] is not None]
            if recipe == "samr1":
                assert len(rollout["steps"]) == reward["sam_called"]
                for sam_step in masks:
                    iou = mask_utils.iou([_coco(sam_step["mask"])], [truth], [0])[0][0]
                    assert iou == pytest.approx(reward["iou"], abs=1e-6) == sam_step["iou"]
            elif task == "workflow":
                assert len(rollout["steps"]) == reward["turns"]
                if masks and masks[-1] is rollout["steps"][-1]:  # ended on a mask: the one the reward kept
                    assert masks[-1]["iou"] == pytest.approx(reward["final_edge_iou"])
            elif task == "auxiliary":
                assert not masks, "the auxiliary task never calls SAM2"
            else:
                assert len(masks) == reward["sam_called"]
                assert all(s["iou"] == pytest.approx(reward["sam_iou"]) for s in masks)
            drawn += 1
    assert drawn >= len(run.steps)
    (events,) = {path.parent for path in (run.run_dir / "tensorboard").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    assert "gallery/0" in accumulator.Tags()["images"]
    assert {event.step for event in accumulator.Images("gallery/0")} == set(run.steps)


def test_eval_checkpoints_evaluates_every_step_of_the_run(real_run, tmp_path):
    """``make eval-checkpoints`` on the real run's checkpoints: verl's merger, the evaluator (tiny SAM2), a plot."""
    from PIL import Image

    from data_prep.smoke import build_eval_sets

    run = real_run("samr1")
    eval_dir = build_eval_sets(tmp_path / "data")
    out = tmp_path / "eval_checkpoints"
    command = [sys.executable, "-m", "recipe.evaluate.checkpoints", "--run", str(run.run_dir), "--data", str(eval_dir)]
    command += ["--mode", "samr1", "--out", str(out), "reward_server=tiny_cpu", "model.backend=transformers"]
    command += ["data.limit=2", "generation.max_new_tokens=24", "generation.batch_size=4", "report=false"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    result = json.loads((out / "checkpoints.json").read_text())
    assert result["failures"] == []
    assert [point["step"] for point in result["points"]] == [1, 2, 3]
    for point in result["points"]:
        step_dir = out / f"global_step_{point['step']}"
        assert Path(point["output_dir"]) == step_dir / "eval"
        summary = json.loads((step_dir / "eval" / "summary.json").read_text())
        # The evaluation is the one of this checkpoint's merged model.
        assert json.loads((step_dir / "eval" / "run.json").read_text())["model"] == str((step_dir / "model").resolve())
        assert summary["method"] == f"global_step_{point['step']}"
        assert set(point["datasets"]) == set(summary["datasets"]) == {"refcocog_test", "reasonseg_val"}
        for name, entry in point["datasets"].items():
            assert {"gIoU", "cIoU", "box_acc"} <= entry.keys()
            for key, value in entry.items():
                assert value == pytest.approx(summary["datasets"][name][key], nan_ok=True), (point["step"], name, key)
    with Image.open(out / "plot.png") as plot:
        plot.load()
        assert plot.width > 0 and plot.height > 0
    table = (out / "table.md").read_text()
    assert "| step 3 |" in table and "Best step per dataset" in table
    # A rerun finds every evaluation finished: nothing is merged or evaluated again.
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    assert again.stdout.count("evaluated earlier") == 3 and "merging" not in again.stdout
