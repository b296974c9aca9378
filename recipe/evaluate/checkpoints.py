"""``python -m recipe.evaluate.checkpoints --run RUN [--data ...] [--mode ...] [--out DIR] [key=value ...]``
(``make eval-checkpoints``): every checkpoint of a training run through the evaluator, gIoU/cIoU against the step.

Each ``RUN/checkpoints/global_step_*`` (verl's layout) is turned into a Hugging Face model by verl's own model merger
(``python -m verl.model_merger merge``) under ``OUT/global_step_<N>/model`` and evaluated by the evaluator
(``python -m recipe.evaluate``) into ``OUT/global_step_<N>/eval``. Both run as child processes, so each checkpoint's
policy (a vLLM engine on a GPU) is freed before the next one loads. A rerun resumes: a merged model is written under a
temporary name and renamed when complete, a checkpoint whose evaluation finished is neither merged nor evaluated
again, and the evaluator resumes a partial one. ``OUT`` then holds ``checkpoints.json`` (one point per step),
``table.md`` (gIoU/cIoU and box accuracy per dataset and step, and the best step per dataset) and ``plot.png``.
A checkpoint that cannot be merged or evaluated is reported in one line and skipped; the others are still evaluated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from recipe.evaluate.config import eval_config
from recipe.evaluate.runner import RUN_FILE, run_fingerprint
from recipe.evaluate.summary import DATASET_LABELS, dataset_order, markdown_table
from recipe.verl_runtime.checkpoints import step_folders
from recipe.verl_runtime.compose import compose_recipe

METRICS = ("gIoU", "cIoU")
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


class CheckpointError(Exception):
    """A checkpoint that cannot be merged or evaluated; its message is one line."""


def find_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """The ``(step, directory)`` of every ``global_step_*`` under ``run/checkpoints`` (or ``run`` itself), by step."""
    root = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    return step_folders(root)


def _last_line(text: str) -> str:
    """The last non-empty line of a child's output: the exception of a traceback, or its final message."""
    # Hydra ends a failed app's traceback with a hint after the exception.
    lines = [line.strip() for line in text.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    if not lines:
        return "no output"
    return lines[-1] if len(lines[-1]) <= 200 else lines[-1][:200] + "…"


def merge_checkpoint(checkpoint: Path, target: Path) -> Path:
    """``checkpoint/actor`` as a Hugging Face model in ``target`` by verl's model merger, unless already there.

    The merger writes ``target`` under a temporary name that is renamed when it succeeded, so an existing ``target``
    is complete (an interrupted merge leaves only the temporary directory, which the next attempt replaces).

    Raises:
        CheckpointError: When the checkpoint has no actor or the merger fails.
    """
    if target.is_dir():
        return target
    actor = checkpoint / "actor"
    if not (actor / "huggingface" / "config.json").is_file():
        raise CheckpointError(f"{actor} holds no verl FSDP actor checkpoint (no huggingface/config.json)")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp"]
    command += ["--local_dir", str(actor), "--target_dir", str(partial)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointError(f"verl's model merger failed: {_last_line(done.stdout + done.stderr)}")
    partial.rename(target)
    return target


def eval_overrides(args: argparse.Namespace, step: int, model: Path, output_dir: Path) -> list[str]:
    """The evaluator's Hydra overrides for one checkpoint: the user's, then the model and output directory."""
    overrides = [f"mode={args.mode}", f"name=global_step_{step}"]
    if args.data:
        overrides.append(f"data.files=[{','.join(str(Path(entry).resolve()) for entry in args.data)}]")
    return overrides + list(args.overrides) + [f"model.path={model.resolve()}", f"output_dir={output_dir.resolve()}"]


def evaluation_finished(overrides: list[str]) -> bool:
    """Whether the evaluation these overrides describe has run to its summary with the same data and settings.

    Raises:
        ValueError, FileNotFoundError, HydraException, OmegaConfBaseException: When the overrides or the evaluation
            data are wrong (the evaluator's own checks).
    """
    cfg = eval_config(compose_recipe("evaluate", overrides))
    output_dir = Path(cfg.output_dir)
    if not (output_dir / "summary.json").is_file() or not (output_dir / RUN_FILE).is_file():
        return False
    return json.loads((output_dir / RUN_FILE).read_text()) == run_fingerprint(cfg, cfg.data_files())


def evaluate_checkpoint(overrides: list[str]) -> None:
    """Runs the evaluator on one checkpoint; its progress bar goes to this process's terminal.

    Raises:
        CheckpointError: When the evaluator fails.
    """
    process = subprocess.Popen([sys.executable, "-m", "recipe.evaluate", *overrides], stderr=subprocess.PIPE)
    # Passed through as it comes (tqdm redraws its bar with carriage returns), its end kept for the error message.
    tail = b""
    while chunk := os.read(process.stderr.fileno(), 65536):
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail = (tail + chunk)[-4000:]
    if process.wait() != 0:
        raise CheckpointError(f"the evaluator failed: {_last_line(tail.decode(errors='replace'))}")


def checkpoint_point(step: int, checkpoint: Path, output_dir: Path) -> dict[str, Any]:
    """One point of the curves: the step and its metrics per dataset, read from the evaluator's ``summary.json``."""
    summary = json.loads((output_dir / "summary.json").read_text())
    datasets = {
        name: {key: entry[key] for key in ("gIoU", "cIoU", "box_acc", "n") if key in entry}
        for name, entry in summary["datasets"].items()
    }
    return {
        "step": step,
        "checkpoint": str(checkpoint),
        "output_dir": str(output_dir),
        "datasets": datasets,
    }


def best_steps(points: Sequence[dict[str, Any]]) -> dict[str, dict[str, tuple[int, float]]]:
    """Per dataset and metric, the step with the highest value (the earliest on ties; NaN never wins)."""
    best: dict[str, dict[str, tuple[int, float]]] = {}
    for point in points:
        for name, entry in point["datasets"].items():
            for metric in METRICS:
                value = entry.get(metric, math.nan)
                current = best.setdefault(name, {}).get(metric)
                if not math.isnan(value) and (current is None or value > current[1]):
                    best[name][metric] = (point["step"], value)
    return best


def best_table(best: dict[str, dict[str, tuple[int, float]]]) -> str:
    """The best step per dataset and metric, as a markdown table."""
    lines = ["| Dataset | best gIoU | best cIoU |", "|---|---|---|"]
    for name in dataset_order(best):
        cells = [
            f"step {best[name][metric][0]} ({100 * best[name][metric][1]:.1f})" if metric in best[name] else "—"
            for metric in METRICS
        ]
        lines.append(f"| {DATASET_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def draw_plot(points: Sequence[dict[str, Any]], path: Path, width: int = 520, height: int = 380) -> Path:
    """gIoU and cIoU (%) per dataset against the step, one panel each, the best step of each dataset ringed.

    Drawn with PIL (matplotlib is not a dependency of the project).
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    names = dataset_order({name for point in points for name in point["datasets"]})
    steps = [point["step"] for point in points]
    low, high = min(steps), max(steps)
    image = Image.new("RGB", (width * len(METRICS), height + 22 * len(names)), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 50, 30, width - 20, height - 40
    best = best_steps(points)

    for panel, metric in enumerate(METRICS):
        x0 = panel * width

        def xy(step: int, value: float, x0: int = x0) -> tuple[float, float]:
            span = (step - low) / (high - low) if high > low else 0.5
            return x0 + left + span * (right - left), bottom - value * (bottom - top)

        draw.text((x0 + left, 8), f"{metric} (%) per step", fill="black", font=font)
        draw.rectangle([x0 + left, top, x0 + right, bottom], outline="black")
        for tick in range(0, 101, 20):
            _, y = xy(low, tick / 100)
            draw.line([x0 + left - 4, y, x0 + left, y], fill="black")
            draw.text((x0 + left - 30, y - 6), str(tick), fill="black", font=font)
        # At most about ten labelled steps, so a long run's labels do not overlap.
        for step in steps[:: math.ceil(len(steps) / 10)]:
            x, _ = xy(step, 0)
            draw.line([x, bottom, x, bottom + 4], fill="black")
            draw.text((x - 6, bottom + 8), str(step), fill="black", font=font)
        draw.text((x0 + (left + right) // 2 - 12, bottom + 22), "step", fill="black", font=font)
        for index, name in enumerate(names):
            color = COLORS[index % len(COLORS)]
            curve = [
                xy(point["step"], value)
                for point in points
                if not math.isnan(value := point["datasets"].get(name, {}).get(metric, math.nan))
            ]
            if len(curve) > 1:
                draw.line(curve, fill=color, width=2)
            for x, y in curve:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
            if metric in best.get(name, {}):
                x, y = xy(*best[name][metric])
                draw.ellipse([x - 7, y - 7, x + 7, y + 7], outline=color, width=2)
    for index, name in enumerate(names):
        y = height + 22 * index
        draw.line([left, y + 6, left + 24, y + 6], fill=COLORS[index % len(COLORS)], width=3)
        draw.text((left + 32, y), f"{DATASET_LABELS.get(name, name)} (ring: best step)", fill="black", font=font)
    image.save(path)
    return path


def write_outputs(points: Sequence[dict[str, Any]], failures: Sequence[str], out: Path) -> str:
    """Writes ``checkpoints.json``, ``table.md`` and ``plot.png`` under ``out``; returns the table."""
    summaries = [
        {**json.loads((Path(point["output_dir"]) / "summary.json").read_text()), "method": f"step {point['step']}"}
        for point in points
    ]
    table = markdown_table(summaries) + "\nBest step per dataset:\n\n" + best_table(best_steps(points))
    if failures:
        table += "\nSkipped checkpoints:\n\n" + "".join(f"- {failure}\n" for failure in failures)
    (out / "checkpoints.json").write_text(json.dumps({"points": points, "failures": list(failures)}, indent=2) + "\n")
    (out / "table.md").write_text(table)
    draw_plot(points, out / "plot.png")
    return table


def _fail(message: str) -> None:
    print(f"eval-checkpoints: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="training run directory (holds checkpoints/)")
    # Repeated rather than nargs="+", so the positional overrides after it are not taken for data.
    parser.add_argument(
        "--data", action="append", help="evaluation parquet file or directory, repeatable (default: conf's)"
    )
    parser.add_argument("--mode", default="samr1", help="evaluation mode: samr1 | veteran | baseline")
    parser.add_argument("--out", type=Path, help="output directory (default: RUN/eval_checkpoints)")
    parser.add_argument("overrides", nargs="*", help="evaluator Hydra overrides (key=value), as for make eval")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Merges and evaluates every checkpoint of ``--run``; returns the points (one per evaluated checkpoint).

    Exits with 2 on bad input (no checkpoints, wrong overrides or data), with 1 when a checkpoint was skipped.
    """
    args = parse_args(argv)
    checkpoints = find_checkpoints(args.run)
    if not checkpoints:
        _fail(f"no global_step_* checkpoint in {args.run / 'checkpoints'}")
    out = args.out or args.run / "eval_checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    points, failures = [], []
    for index, (step, checkpoint) in enumerate(checkpoints, 1):
        step_dir = out / checkpoint.name
        overrides = eval_overrides(args, step, step_dir / "model", step_dir / "eval")
        try:
            finished = evaluation_finished(overrides)
        except (ValueError, FileNotFoundError, HydraException, OmegaConfBaseException) as err:
            # The same overrides and data serve every checkpoint: nothing can be evaluated.
            _fail(" ".join(line.strip() for line in str(err).splitlines() if line.strip()))
        prefix = f"[{index}/{len(checkpoints)}] {checkpoint.name}"
        try:
            if finished:
                print(f"{prefix}: evaluated earlier", flush=True)
            else:
                merged = step_dir / "model"
                print(f"{prefix}: {'merged earlier' if merged.is_dir() else 'merging (verl model merger)'}", flush=True)
                merge_checkpoint(checkpoint, merged)
                print(f"{prefix}: evaluating", flush=True)
                evaluate_checkpoint(overrides)
        except CheckpointError as err:
            failures.append(f"{checkpoint.name}: {err}")
            print(f"{prefix}: skipped: {err}", file=sys.stderr, flush=True)
            continue
        points.append(checkpoint_point(step, checkpoint, step_dir / "eval"))
    if not points:
        print(f"eval-checkpoints: no checkpoint could be evaluated ({len(failures)} skipped)", file=sys.stderr)
        sys.exit(1)
    print(write_outputs(points, failures, out), flush=True)
    for name, metrics in best_steps(points).items():
        best = ", ".join(f"{metric} {100 * value:.1f} at step {step}" for metric, (step, value) in metrics.items())
        print(f"best on {DATASET_LABELS.get(name, name)}: {best or 'no score'}", flush=True)
    print(f"eval-checkpoints: {len(points)} evaluated, {len(failures)} skipped; table, plot and points in {out}")
    if failures:
        sys.exit(1)
    return points


if __name__ == "__main__":
    main()
