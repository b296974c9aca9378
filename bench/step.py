"""``make bench-step``: what a training step costs, and SAM2's share of it, from verl's own timing metrics.

For each recipe it runs the recipe's entry point on the CPU with the smoke preset (tiny models, synthetic data, no
checkpoints) for ``--steps`` steps and prints one line, averaged over the steps after the first (which warms up):

    bench-step: recipe=samr1 step_s=.. gen_s=.. reward_s=.. old_log_prob_s=.. update_actor_s=.. sam_share=..

``gen_s``, ``old_log_prob_s`` and ``update_actor_s`` are verl's ``timing_s/*``; rewards are computed inside
generation (verl's reward loop in the agent loops), so ``reward_s`` is the time the SAM2 pool's device spent
serving the step (the trainer's ``sam/served_s``), and ``sam_share = reward_s / step_s``. Where rollouts keep
generating while SAM2 serves, that share bounds SAM2's cost to the step from above.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from data_prep.smoke import build_smoke_inputs
from recipe.smoke import PROMPTS, add_recipes_argument, command, launch

TIMINGS = {"step_s": "timing_s/step", "gen_s": "timing_s/gen", "reward_s": "sam/served_s"}
TIMINGS |= {"old_log_prob_s": "timing_s/old_log_prob", "update_actor_s": "timing_s/update_actor"}


def step_line(recipe: str, steps: list[dict]) -> str:
    """The ``bench-step:`` line of ``recipe`` from its logged steps (the first left out when there are others)."""
    measured = steps[1:] or steps
    means = {name: statistics.fmean(step[key] for step in measured) for name, key in TIMINGS.items()}
    share = sum(step["sam/served_s"] for step in measured) / sum(step["timing_s/step"] for step in measured)
    figures = " ".join(f"{name}={value:.2f}" for name, value in means.items())
    return f"bench-step: recipe={recipe} {figures} sam_share={share:.3f}"


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipes_argument(parser)
    parser.add_argument("--out", default="outputs/bench_step")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    lines = []
    for recipe in args.recipes:
        out = Path(args.out).resolve() / recipe
        out.mkdir(parents=True, exist_ok=True)
        inputs = build_smoke_inputs(out, recipe, PROMPTS[recipe])
        extra = ["trainer.save_freq=-1", "trainer.resume_mode=disable"]
        argv_ = command(recipe, inputs.train_files, inputs.model, out / "run", args.steps, extra)
        run = launch(argv_, out / "bench.log", {**os.environ, "VERL_PLATFORM": "cpu"})
        if run.returncode != 0:
            raise SystemExit(f"bench-step: {recipe} failed (exit {run.returncode}); log in {out / 'bench.log'}")
        lines.append(step_line(recipe, [step["data"] for step in run.steps]))
    print("\n".join(lines), flush=True)
    return lines


if __name__ == "__main__":
    main()
