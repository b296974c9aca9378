"""Checks of what a launch of a recipe's entry point through verl's trainer left behind, shared by the tests that
launch one: the veteran smoke run (test_real_trainer.py) and SAM-R1's killed-and-resumed run (test_learning.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEP_LINE = re.compile(r"^(?:\x1b\[\d+m)?\(SamTaskRunner pid=\d+\)(?:\x1b\[0m)? step:(\d+) - ", re.MULTILINE)
"""verl's per-step metrics line, printed by the project's TaskRunner."""


def printed_steps(output: str) -> list[int]:
    """The steps whose metrics line a launch printed, in order."""
    return [int(step) for step in STEP_LINE.findall(output)]


def assert_checkpoints_hold_model_optimizer_and_data_state(run_dir: Path, steps: list[int]) -> None:
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == str(steps[-1])
    for step in steps:
        folder = checkpoints / f"global_step_{step}"
        actor = folder / "actor"
        for part in ("model", "optim", "extra_state"):
            assert (actor / f"{part}_world_size_1_rank_0.pt").is_file(), (step, part)
        assert (folder / "data.pt").is_file()


def _coco(rle):
    return {"size": rle["size"], "counts": rle["counts"].encode()}


def assert_gallery_shows_what_the_reward_computed(recipe: str, run_dir: Path, steps: dict[int, dict]) -> None:
    """The gallery's masks are the reward's: SAM-R1's recorded mask has the reward's IoU by pycocotools, and each
    SAM-Veteran task records what it was scored on; the pictures reach TensorBoard, read back by its own reader."""
    from pycocotools import mask as mask_utils
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    drawn = 0
    for step, metrics in steps.items():
        assert metrics["gallery/errors"] == 0 and metrics["gallery/rollouts"] >= 1, step
        page_dir = run_dir / "gallery" / f"step_{step:06d}"
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
    assert drawn >= len(steps)
    (events,) = {path.parent for path in (run_dir / "tensorboard").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    assert "gallery/0" in accumulator.Tags()["images"]
    assert {event.step for event in accumulator.Images("gallery/0")} == set(steps)


def assert_eval_checkpoints_evaluates_every_step(run_dir: Path, steps: list[int], tmp_path: Path) -> None:
    """``make eval-checkpoints`` on a real run's checkpoints: verl's merger, the evaluator (tiny SAM2), a plot."""
    from PIL import Image

    from data_prep.smoke import build_eval_sets

    eval_dir = build_eval_sets(tmp_path / "data")
    out = tmp_path / "eval_checkpoints"
    command = [sys.executable, "-m", "recipe.evaluate.checkpoints", "--run", str(run_dir), "--data", str(eval_dir)]
    command += ["--mode", "samr1", "--out", str(out), "reward_server=tiny_cpu", "model.backend=transformers"]
    command += ["data.limit=2", "generation.max_new_tokens=24", "generation.batch_size=4", "report=false"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    result = json.loads((out / "checkpoints.json").read_text())
    assert result["failures"] == []
    assert [point["step"] for point in result["points"]] == steps
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
    assert f"| step {steps[-1]} |" in table and "Best step per dataset" in table
    # A rerun finds every evaluation finished: nothing is merged or evaluated again.
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    assert again.stdout.count("evaluated earlier") == len(steps) and "merging" not in again.stdout
