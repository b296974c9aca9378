"""``make gpu-check``'s training part: both recipes' entry points for 2 steps on one GPU, with the tiny models.

Each recipe is launched as users launch it (``python -m recipe.<recipe>.main``) with ``+smoke=gpu``
(``conf/smoke/gpu.yaml``) on ``make smoke``'s inputs: the tiny Qwen2.5-VL served by vLLM from dummy weights (so
every sampled token comes through verl's weight sync), sleeping and waking around each update, FSDP2, and the tiny
SAM2 in its Ray actor on the same GPU. Nothing is downloaded. One line per recipe reports the exit code, the steps
logged, the seconds per step and the largest gap between the rollout's and the actor's token probabilities.

With ``quick`` nothing is launched (vLLM needs a GPU): the inputs are built and each command's config is composed
and put through preflight's configuration checks, so the commands a GPU node would run are known to compose.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench.processes import kill_tree
from data_prep.smoke import build_smoke_inputs
from recipe.smoke import PROMPTS, RECIPES, command, logged_steps, metrics_files

STEPS = 2
PRESET = "gpu"


def commands(out_dir: Path) -> dict[str, list[str]]:
    """Each recipe's entry point for :data:`STEPS` steps with ``+smoke=gpu`` on inputs built under ``out_dir``."""
    argvs = {}
    for recipe in RECIPES:
        inputs = build_smoke_inputs(out_dir / recipe / "inputs", recipe, PROMPTS[recipe])
        run_dir = out_dir / recipe / "run"
        argvs[recipe] = command(recipe, inputs.train_files, inputs.model, run_dir, STEPS, [], preset=PRESET)
    return argvs


def _overrides(argv: list[str]) -> list[str]:
    """The Hydra overrides of an entry-point command (``python -m recipe.<recipe>.main <overrides>``)."""
    return argv[3:]


def dry_run(argvs: dict[str, list[str]]) -> list[str]:
    """One line per recipe: its command's config composed and checked as preflight checks it, nothing launched."""
    from recipe.verl_runtime.compose import compose_recipe
    from recipe.verl_runtime.preflight import preflight

    lines = []
    for recipe, argv in argvs.items():
        # Without the host and GPU-count checks: this machine is not the GPU node the commands are for.
        errors = preflight(compose_recipe(recipe, _overrides(argv)), available_gpus=None, host=False)
        verdict = "composes, preflight's config checks pass" if not errors else "; ".join(errors)
        lines.append(f"train {recipe}: not launched (--quick: vLLM needs a GPU); {verdict}")
    return lines


def launch_environment() -> dict[str, str]:
    """This process's environment with vLLM on loopback where unset (the Makefile's default, for a direct call)."""
    return {"VLLM_HOST_IP": "127.0.0.1", **os.environ}


def _launch(argv: list[str], log: Path, timeout_s: float) -> int | None:
    """Runs ``argv`` with its output in ``log``; its exit code, or None when it was stopped at ``timeout_s``."""
    with log.open("w") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=launch_environment())
        try:
            return process.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
            process.wait()
            return None


def train(argvs: dict[str, list[str]], deadline: float) -> tuple[list[str], bool]:
    """Launches each recipe in turn until ``deadline`` (``time.monotonic()``); one line per recipe and whether every
    launch trained all its steps."""
    lines, passed = [], True
    for recipe, argv in argvs.items():
        run_dir = Path(next(arg for arg in argv if arg.startswith("samrl.output_dir=")).split("=", 1)[1])
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "train.log"
        before = metrics_files(run_dir)
        started = time.monotonic()
        code = _launch(argv, log, deadline - started)
        steps = logged_steps(run_dir, before)
        ok = code == 0 and len(steps) == STEPS
        passed &= ok
        exit_text = "stopped at the time budget" if code is None else f"exit {code}"
        figures = ""
        if steps:
            per_step = sum(step["data"].get("timing_s/step", 0.0) for step in steps) / len(steps)
            drift = max(step["data"].get("training/rollout_probs_diff_max", float("nan")) for step in steps)
            figures = f"; {per_step:.1f} s/step; rollout_probs_diff_max {drift:.3g}"
        lines.append(
            f"train {recipe}: {'ok' if ok else 'FAILED'} ({exit_text}, {len(steps)} of {STEPS} steps in "
            f"{time.monotonic() - started:.0f} s{figures}); log {log}"
        )
    return lines, passed
