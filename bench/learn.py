"""``make bench-learn``: does training improve the policy? Each recipe through verl's real trainer on a CPU.

For each recipe it builds the smoke inputs (``data_prep.smoke``), warm-starts the tiny Qwen2.5-VL so that its own
answers to the run's prompts are sometimes right and sometimes wrong (:mod:`bench.warm_start`), trains it with the
recipe's own entry point (``python -m recipe.<recipe>.main +smoke=cpu``, scripting off, the box-only segmenter
``reward_server=box`` so the IoU reward follows the answer), and runs the same training again with the rollout's
weight sync off (``engine_kwargs.hf_cpu.sync_weights=false``): a control whose policy never reaches the rollout.
It ends with one line per recipe:

    bench-learn: recipe=samr1 steps=14 early=0.69 late=2.52 frozen_late=0.00 s_per_step=40.9

``early`` and ``late`` are verl's ``critic/score/mean`` averaged over the first and the last 3 steps of the learning
run, ``frozen_late`` the same over the control's last 3 steps, ``s_per_step`` the learning run's mean
``timing_s/step``. A run learns when ``late`` exceeds both ``early`` and ``frozen_late`` by its recipe's margin
(:attr:`RecipeCheck.margin`, why each is out of chance's reach beside it in :data:`CHECKS`).
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.negated_agent_loops import write_negated_agent_loops
from bench.warm_start import Answer, PromptInputs, fit_answers, rollout_prompts, workflow_second_turn
from data_prep.smoke import SmokeInputs, build_smoke_inputs
from recipe.smoke import Launch, command, launch, recipe_overrides
from recipe.task.dataset_rows import GroundTruth, Row
from reward_server.masks import box_iou, box_to_mask, decode_rle, mask_iou

STEPS = 14
WINDOW = 3
PROMPTS = 1
SEED = 25
"""The synthetic row whose target fills 0.79 of its box: the right box earns tier 3 from the box-only segmenter
(most synthetic polygons fill less than half their box, which no box lifts above tier 0)."""
"""One grounding row: its answers are the same whichever prompt is drawn, which makes the warm start a minute's fit
instead of the many minutes that prompt-dependent boxes take; the check is that the loop learns, not that the model
generalises."""
MIX = {"right": 0.15, "wrong": 0.35, "none": 0.5}
"""The warm start's answers and their probabilities: the target's box, a box elsewhere, the end token alone."""
STOP_MIX = {"stop": 0.5, "none": 0.5}
"""SAM-Veteran's answers to the workflow's overlay turn (after either box): "no errors", or the end token alone."""


@dataclass(frozen=True)
class RecipeCheck:
    """What the learning check of one recipe trains on and how it judges the run.

    Attributes:
        answer: The well-formed answer, a format string of ``box`` and ``point``.
        stop: SAM-Veteran's well-formed answer to the workflow's overlay turn ("no errors": both points null);
            empty for a recipe without that turn.
        tasks: Which of the smoke inputs' files the run trains on (their position in ``SmokeInputs.train_files``).
        overrides: The recipe's own training overrides.
        margin: Score points by which ``late`` must exceed ``early`` and ``frozen_late`` (see :data:`CHECKS`).
    """

    answer: str
    stop: str
    tasks: tuple[int, ...]
    overrides: tuple[str, ...]
    margin: float


CHECKS = {
    # Scores -2 (no answer), 2 (a wrong box) or 2 + tier (the right box: tier 3 or 4) with the mix's probabilities:
    # a per-sample standard deviation of 2.9, so a 3-step window's mean (48 samples) varies by 0.42 and the difference
    # of two windows of a policy that does not change by 0.6; 1.5 is 2.5 of those.
    "samr1": RecipeCheck(
        answer='<think>ok</think><answer>{{"bbox_2d": {box}, "point_2d": {point}, "label": "it"}}</answer>',
        stop="",
        tasks=(0,),
        overrides=("data.train_batch_size=1", "actor_rollout_ref.rollout.n=16"),
        margin=1.5,
    ),
    # The grounding task (single turn, dynamic sampling's box diversity) and the multi-turn workflow from the same
    # row: grounding scores 0, 2 or about 4.8 (format 2, box 2, R_SAM the box mask's edge IoU), the workflow the mean
    # of its turns (its first is the same grounding answer, its second "no errors" or nothing: STOP_MIX). Per-sample
    # deviation about 1.5, a window of 48 samples varies by 0.22, two by 0.31; 1.0 is 3 of those.
    "veteran": RecipeCheck(
        answer='<think>ok</think><answer>{{"bbox_2d": {box}}}</answer>',
        stop='<think>ok</think><answer>{"pos_point": null, "neg_point": null}</answer>',
        tasks=(0, 3),
        overrides=("data.train_batch_size=2", "actor_rollout_ref.rollout.n=8"),
        margin=1.0,
    ),
}
RECIPES = tuple(CHECKS)

TRAINING = [
    "actor_rollout_ref.rollout.engine_kwargs.hf_cpu.scripted_every=0",
    # 5e-4 moves the warm-started model's answer shares within a few steps; 1e-3 and above broke the answers.
    "actor_rollout_ref.actor.optim.lr=5e-4",
    "reward_server=box",
    # Reproducible samples (the CPU rollout's seeds follow the step, the prompt and the sample): a rerun, or a run
    # resumed from a checkpoint, draws what the first run drew (tests/test_learning.py).
    "actor_rollout_ref.rollout.full_determinism=true",
]
FROZEN = ["+actor_rollout_ref.rollout.engine_kwargs.hf_cpu.sync_weights=false"]


def negated(recipe: str, run_dir: Path) -> list[str]:
    """The overrides of ``recipe``'s flipped-advantage control (tests only): every score negated, through verl's
    reward-function hook for SAM-R1 (:mod:`bench.negated_reward`) and its agent-loop config file for SAM-Veteran
    (:mod:`bench.negated_agent_loops`, written into ``run_dir``)."""
    if recipe == "samr1":
        return [
            f"reward.custom_reward_function.path={Path(__file__).with_name('negated_reward.py')}",
            "reward.custom_reward_function.name=negated_compute_score",
        ]
    run_dir.mkdir(parents=True, exist_ok=True)
    loops = write_negated_agent_loops(run_dir / "negated_agent_loops.yaml")
    return [f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops}"]


def _int_box(box) -> list[int]:
    return [round(float(v)) for v in box]


def mixed_answers(template: str, prompt: PromptInputs) -> list[Answer]:
    """The right box (the target's), a wrong one (the image corner box farthest from the target) and no answer."""
    truth = GroundTruth.of(Row.of(prompt.row).reward_model.ground_truth)
    mask = decode_rle(truth.mask)
    right = _int_box(truth.box)
    height, width = mask.shape
    side = min(height, width) // 6
    corners = [[0, 0, side, side], [width - side, 0, width, side], [0, height - side, side, height]]
    corners.append([width - side, height - side, width, height])
    wrong = min(corners, key=lambda box: mask_iou(box_to_mask(box, mask.shape), mask))
    assert box_iou([right], [wrong])[0, 0] < 0.1, (right, wrong)

    def text(box: list[int]) -> str:
        return template.format(box=box, point=[(box[0] + box[2]) // 2, (box[1] + box[3]) // 2])

    return [Answer(text(right), MIX["right"]), Answer(text(wrong), MIX["wrong"]), Answer("", MIX["none"])]


@dataclass
class LearnSetup:
    """A recipe's learning-check inputs: the smoke rows, the warm-started model and the overrides of every run."""

    recipe: str
    inputs: SmokeInputs
    model: Path
    overrides: list[str] = field(default_factory=list)

    def command(self, run_dir: Path, steps: int, extra: Sequence[str] = ()) -> list[str]:
        """The recipe's entry point for ``steps`` steps on the warm-started model, with ``extra`` overrides."""
        return command(self.recipe, self.inputs.train_files, self.model, run_dir, steps, [*self.overrides, *extra])


def prepare(recipe: str, out_dir: Path) -> LearnSetup:
    """Builds ``recipe``'s smoke inputs under ``out_dir`` and warm-starts the tiny model on the run's prompts."""
    check = CHECKS[recipe]
    built = build_smoke_inputs(out_dir / "inputs", recipe, PROMPTS, seed=SEED)
    inputs = SmokeInputs([built.train_files[task] for task in check.tasks], built.model)
    # The workflow's first turn asks the grounding question of the same row and image: the grounding row's prompt
    # is its prompt too (tests/test_tokenisation_parity.py), so the first file's rows are the prompts to fit.
    run_overrides = [*recipe_overrides(recipe, inputs.model), *TRAINING, *check.overrides]
    prompts = rollout_prompts(recipe, inputs.model, inputs.train_files[:1], run_overrides)
    for prompt in prompts:
        prompt.answers = mixed_answers(check.answer, prompt)
    if check.stop:  # the workflow's overlay turn after each box, so that its answers can be well formed too
        followups = [
            workflow_second_turn(inputs.model, prompt, answer.text, run_overrides)
            for prompt in prompts
            for answer in prompt.answers
            if answer.text
        ]
        for followup in followups:
            assert followup is not None, "a warm-start box ended the workflow before its overlay turn"
            followup.answers = [Answer(check.stop, STOP_MIX["stop"]), Answer("", STOP_MIX["none"])]
        prompts += followups
    model = out_dir / "warm_model"
    fit_answers(inputs.model, prompts, model)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    longest = max(len(tokenizer.encode(answer.text)) for prompt in prompts for answer in prompt.answers) + 1
    budget = longest + 8  # room past the longest answer: a sample that runs on shows as a malformed answer
    overrides = [*TRAINING, *check.overrides, f"actor_rollout_ref.rollout.engine_kwargs.hf_cpu.max_new_tokens={budget}"]
    if recipe == "samr1":  # the workflow's response budget holds its overlay turns: the smoke run's stays
        overrides.append(f"data.max_response_length={budget}")
    return LearnSetup(recipe, inputs, model, overrides)


def train(setup: LearnSetup, run_dir: Path, steps: int, extra: list[str] = ()) -> Launch:
    """One launch of the recipe's entry point on the warm-started model; raises when it fails."""
    argv = setup.command(run_dir, steps, extra)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = launch(argv, run_dir / "train.log", {**os.environ, "VERL_PLATFORM": "cpu"})
    if done.returncode != 0:
        raise SystemExit(f"bench-learn: {setup.recipe} failed (exit {done.returncode}); log in {run_dir / 'train.log'}")
    return done


def window_mean(steps: list[dict], key: str, last: bool) -> float:
    """Mean of ``key`` over the first (or last) :data:`WINDOW` logged steps."""
    ordered = sorted(steps, key=lambda step: step["step"])
    chosen = ordered[-WINDOW:] if last else ordered[:WINDOW]
    return statistics.fmean(step["data"][key] for step in chosen)


def learn_line(recipe: str, learned: Launch, frozen: Launch) -> str:
    early = window_mean(learned.steps, "critic/score/mean", last=False)
    late = window_mean(learned.steps, "critic/score/mean", last=True)
    frozen_late = window_mean(frozen.steps, "critic/score/mean", last=True)
    seconds = np.mean([step["data"]["timing_s/step"] for step in learned.steps])
    return (
        f"bench-learn: recipe={recipe} steps={len(learned.steps)} early={early:.2f} late={late:.2f} "
        f"frozen_late={frozen_late:.2f} s_per_step={seconds:.1f}"
    )


def run_recipe(recipe: str, out_dir: Path, steps: int) -> str:
    setup = prepare(recipe, out_dir)
    learned = train(setup, out_dir / "learn", steps, ["trainer.save_freq=-1"])
    frozen = train(setup, out_dir / "frozen", steps, ["trainer.save_freq=-1", *FROZEN])
    line = learn_line(recipe, learned, frozen)
    print(line, flush=True)
    return line


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--out", default="outputs/bench_learn", help="inputs, models and runs go to <out>/<recipe>/")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    return [run_recipe(recipe, out / recipe, args.steps) for recipe in args.recipes]


if __name__ == "__main__":
    main()
