"""``make smoke``: both recipes through verl's real trainer on a CPU, with tiny models and synthetic data.

For each recipe it builds the inputs (``data_prep.smoke``), prints and runs the recipe's own entry point
(``python -m recipe.<recipe>.main +smoke=cpu ...``, as ``make train-<recipe>`` does) for 2 steps with a checkpoint
after each, runs it again to step 3 (verl resumes from step 2), and ends with one line read from the runs' outputs:

    smoke: recipe=samr1 trainer=verl steps=3 resumed_from=2 checkpoints=3 reward_metrics=8 sam_calls=6 generalized=2

``reward_metrics`` counts the distinct ``reward/*`` metrics the steps logged; ``sam_calls`` the prompts the SAM2
pool answered over all steps (the trainer's ``sam/requests``); ``generalized`` the generalized rows (several objects
or none: a two-object and a no-target gRefCOCO row) the steps trained on. The rows are read in order, so those two
are SAM-R1's third step, and every SAM-Veteran step holds them (``--no-generalized`` leaves them out).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from data_prep.smoke import build_smoke_inputs
from recipe.task.dataset_rows import Row
from recipe.tiny_vlm import TINY_BUILDERS
from recipe.verl_runtime.preflight import image_tokens, workflow_response_tokens

RECIPES = ("samr1", "veteran")
# The smoke model sees 112x112 images (16 tokens, data_prep.smoke): every smoke prompt fits in 256 tokens.
COMMON_OVERRIDES = ["data.max_prompt_length=256"]
# One row per task and no shuffling: every step trains grounding, mask comprehension, auxiliary and workflow.
WORKFLOW_STEPS = 1
VETERAN_TASK_ROWS = 4
VETERAN_OVERRIDES = ["data.shuffle=false", f"veteran.workflow.max_steps={WORKFLOW_STEPS}"]
GENERALIZED_ROWS = 2
PROMPTS = {"samr1": 4, "veteran": 1}
DEFAULT_BASE = "qwen2_5_vl"
"""The papers' base model family; ``--base qwen3_vl`` runs the tiny Qwen3-VL instead."""


def recipe_overrides(recipe: str, model: Path, generalized: bool = False) -> list[str]:
    """The smoke run's own overrides of ``recipe`` on top of ``+smoke=cpu``; with ``generalized`` rows (the last
    file), what makes the steps train them: SAM-R1 reads its rows in order, 2 a step, so that step 3 (after the
    resume) is the 2 generalized rows; SAM-Veteran's batch is every row."""
    if recipe == "samr1":
        return [*COMMON_OVERRIDES, *(["data.shuffle=false"] if generalized else [])]
    # The workflow's response holds its grounding answer, one overlay turn and one refinement (preflight's rule).
    budget = workflow_response_tokens(WORKFLOW_STEPS, image_tokens(str(model)))
    batch = VETERAN_TASK_ROWS + (GENERALIZED_ROWS if generalized else 0)
    batch_and_budget = [f"data.train_batch_size={batch}", f"data.max_response_length={budget}"]
    return [*COMMON_OVERRIDES, *VETERAN_OVERRIDES, *batch_and_budget]


@dataclass
class Launch:
    """One run of a recipe's entry point: its command, exit code, printed output and logged steps."""

    command: list[str]
    returncode: int
    output: str
    steps: list[dict]


def command(
    recipe: str,
    files: list[Path],
    model: Path,
    run_dir: Path,
    steps: int,
    extra: list[str],
    preset: str = "cpu",
    generalized: bool = False,
) -> list[str]:
    """The entry point's command line for ``steps`` training steps of ``recipe`` on the smoke inputs, with the
    ``conf/smoke/<preset>.yaml`` preset (``gpu``: make gpu-check's training part); ``generalized``: the inputs end
    with the generalized rows (:func:`recipe_overrides`)."""
    joined = ",".join(str(path) for path in files)
    return [
        sys.executable,
        "-m",
        f"recipe.{recipe}.main",
        f"+smoke={preset}",
        f"data.train_files=[{joined}]",
        f"data.val_files={files[0]}",
        f"actor_rollout_ref.model.path={model}",
        f"samrl.output_dir={run_dir}",
        f"trainer.total_training_steps={steps}",
        *recipe_overrides(recipe, model, generalized),
        *extra,
    ]


def launch(argv: list[str], log: Path, env: dict[str, str]) -> Launch:
    """Runs ``argv``, echoing and saving its output; returns it with the steps its metrics file gained."""
    print(f"smoke: running {shlex.join(argv)}", flush=True)
    run_dir = Path(next(arg.split("=", 1)[1] for arg in argv if arg.startswith("samrl.output_dir=")))
    before = metrics_files(run_dir)
    lines = []
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, "env": env}
    with subprocess.Popen(argv, **pipe) as process, log.open("a") as sink:
        for line in process.stdout:
            sys.stdout.write(line)
            sink.write(line)
            lines.append(line)
    return Launch(argv, process.returncode, "".join(lines), logged_steps(run_dir, before))


def metrics_files(run_dir: Path) -> set[Path]:
    """verl's metrics files of a run (one per launch, ``trainer.logger`` ``file``)."""
    return set((run_dir / "metrics").glob("*.jsonl"))


def logged_steps(run_dir: Path, since: set[Path]) -> list[dict]:
    """The step records of the run's metrics files that are not in ``since`` (the launches after it was taken).

    A record is a line with its newline. The text after the last newline is left out: verl's logger may be writing it
    while this reads (a reader can see a write of more than a page half done), or a kill cut it short.
    """
    new = sorted(metrics_files(run_dir) - since)
    return [json.loads(line) for path in new for line in path.read_text().split("\n")[:-1] if line.strip()]


def generalized_count(files: list[Path]) -> int:
    """How many generalized rows (``ground_truth.objects`` set) the training files hold."""
    column = Row.reward_model.name
    return sum(
        Row({column: value}).ground_truth.generalized
        for path in files
        for value in pq.read_table(path, columns=[column]).column(column).to_pylist()
    )


def summary(recipe: str, launches: list[Launch], run_dir: Path, generalized: int | None = None) -> str:
    """The ``smoke:`` line of a recipe, read from its launches and its checkpoint directory (``generalized``: the
    generalized rows trained, when the run had any)."""
    steps = [step for run in launches for step in run.steps]
    reward_metrics = {key for step in steps for key in step["data"] if key.startswith("reward/")}
    checkpoints = list((run_dir / "checkpoints").glob("global_step_*"))
    resumed = launches[-1].steps[0]["step"] - 1 if launches[-1].steps else None
    sam_calls = round(sum(step["data"].get("sam/requests", 0) for step in steps))
    return (
        f"smoke: recipe={recipe} trainer=verl steps={max(step['step'] for step in steps)} resumed_from={resumed} "
        f"checkpoints={len(checkpoints)} reward_metrics={len(reward_metrics)} sam_calls={sam_calls}"
        + ("" if generalized is None else f" generalized={generalized}")
    )


def run_recipe(
    recipe: str, out_dir: Path, steps: int, extra: list[str], base: str = DEFAULT_BASE, generalized: bool = True
) -> str:
    """Trains ``recipe`` on the tiny ``base`` model for ``steps - 1`` steps, resumes to ``steps``, and returns its
    ``smoke:`` line; ``generalized`` adds the generalized rows (:func:`recipe_overrides`)."""
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = build_smoke_inputs(out_dir, recipe, PROMPTS[recipe], base=base, generalized=generalized)
    run_dir = out_dir / "run"
    env = {**os.environ, "VERL_PLATFORM": "cpu"}
    log = out_dir / "smoke.log"
    launches = []
    for total in (steps - 1, steps):
        argv = command(recipe, inputs.train_files, inputs.model, run_dir, total, extra, generalized=generalized)
        launches.append(launch(argv, log, env))
        if launches[-1].returncode != 0:
            raise SystemExit(f"smoke: {recipe} failed (exit {launches[-1].returncode}); full log in {log}")
    line = summary(recipe, launches, run_dir, generalized_count(inputs.train_files[-1:]) if generalized else None)
    print(f"smoke: {recipe} took {time.monotonic() - started:.0f} s; outputs in {run_dir}", flush=True)
    print(line, flush=True)
    return line


def recipe_name(value: str) -> str:
    """argparse type of a recipe name (``choices`` would refuse an empty ``nargs="*"`` list before Python 3.12)."""
    if value not in RECIPES:
        raise argparse.ArgumentTypeError(f"invalid recipe {value!r} (choose from {', '.join(RECIPES)})")
    return value


def add_recipes_argument(parser: argparse.ArgumentParser) -> None:
    """The positional recipe names; every recipe when none is given."""
    parser.add_argument("recipes", nargs="*", type=recipe_name, default=list(RECIPES), metavar="{samr1,veteran}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipes_argument(parser)
    parser.add_argument("--out", default="outputs/smoke", help="inputs, runs and logs go to <out>/<recipe>/")
    parser.add_argument("--steps", type=int, default=3, help="the last step; the first run stops one before")
    parser.add_argument("--override", action="append", default=[], help="a Hydra override for both launches")
    parser.add_argument(
        "--base", choices=sorted(TINY_BUILDERS), default=DEFAULT_BASE, help="the tiny random base model's family"
    )
    parser.add_argument(
        "--no-generalized",
        dest="generalized",
        action="store_false",
        help="leave out the generalized rows (a two-object and a no-target gRefCOCO row)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[str]:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    return [
        run_recipe(recipe, out / recipe, args.steps, args.override, args.base, args.generalized)
        for recipe in args.recipes
    ]


if __name__ == "__main__":
    main()
