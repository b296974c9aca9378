"""``make bench-eval``: the evaluator's batched path against a one-sample-at-a-time loop, same models, same samples.

- loop: per sample, one ``generate`` call and one ``SAM2ImagePredictor`` call (``set_image`` + ``predict``), scored
  with :class:`~recipe.task.metrics.SegMetrics`, as the public evaluation scripts (Seg-Zero, LISA) run.
- batched: :func:`recipe.evaluate.runner.evaluate` in ``samr1`` mode with the transformers backend: one ``generate``
  call per batch of ``generation.batch_size`` samples and one SAM2 engine call per batch.

Both times count reading the rows and exclude loading the models; the evaluator's also counts writing its records
and summary. One sample through the loop first, untimed, warms both paths up.

Both run the tiny random Qwen2.5-VL and the tiny random SAM2 (``reward_server=tiny_cpu``; the loop's predictor wraps
the engine's model) on synthetic RefCOCOg test and ReasonSeg val rows, with greedy decoding. A random model's free
answers almost never parse, which would leave SAM2 out of both runs, so both decode through :class:`ForcedAnswer`:
it forces SAM-R1's answer template and lets the model choose only the digits of the box and the point, greedily from
its own logits, so every sample reaches SAM2 and its coordinates still depend on the image and the question.

Prints one line (everything else goes to stderr); ``same_metrics`` says whether both runs give the same n on every
dataset, and gIoU and cIoU equal up to :data:`FLIP_PIXELS` pixels per mask (:func:`same_metrics`):

    bench-eval: samples=N loop_s=.. batched_s=.. speedup=.. same_metrics=<true|false>

``python -m bench.eval [--samples 32] [--batch-size 64] [--small-images] [--out outputs/bench_eval]``
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sam2.sam2_image_predictor import SAM2ImagePredictor
from transformers import LogitsProcessor, LogitsProcessorList

from data_prep.smoke import build_eval_sets
from recipe.evaluate.config import EvalConfig, eval_config
from recipe.evaluate.modes import SamR1Episode, get_mode
from recipe.evaluate.policies import TransformersPolicy, build_policy, chat_inputs
from recipe.evaluate.runner import evaluate
from recipe.evaluate.samples import BadSample, EvalSample, iter_samples
from recipe.task.metrics import SegMetrics
from recipe.tiny_vlm import QWEN2_5_VL_MAX_PIXELS, SMALL_IMAGE_MAX_PIXELS, build_tiny_qwen2_5_vl
from recipe.verl_runtime.compose import compose_recipe
from reward_server.segmenters import build_engine

# SAM-R1's answer: strings are forced as they are, a range is a 3-digit number whose leading digit the model picks
# from it (and the other two from 0-9). x1, y1 < 400 < 500 <= x2, y2 keep the box valid; every coordinate lies inside
# the 840x840 model image; no leading zero, which JSON forbids.
LOW, HIGH, ANY = range(1, 4), range(5, 8), range(1, 8)
ANSWER = (
    '<think>the target</think><answer>{"bbox_2d": [', LOW, ", ", LOW, ", ", HIGH, ", ", HIGH,
    '], "point_2d": [', ANY, ", ", ANY, '], "label": "target"}</answer>',
)  # fmt: skip

# The loop's predictor and the evaluator's engine run the same float32 SAM2 on the same images and prompts, but in
# different batch shapes and tensor layouts, so their low-res logits differ by rounding (at most 2e-7 measured, as in
# bench-reward's parity figure), and a pixel whose logit is that close to the threshold 0 may land on either side.
# Random SAM2 weights give logits of about 1e-2, which leaves a pixel or two of a synthetic image's ~270k that close
# (2 were seen to flip): the metrics agree when no more than this many flipped pixels per mask explain the difference.
FLIP_PIXELS = 4


def answer_steps(tokenizer: Any) -> list[torch.Tensor]:
    """The token ids allowed at each position of :data:`ANSWER`, then the end-of-turn token that stops generation."""
    digits = [tokenizer.convert_tokens_to_ids(str(digit)) for digit in range(10)]
    steps: list[list[int]] = []
    for piece in ANSWER:
        if isinstance(piece, str):
            steps += [[token] for token in tokenizer(piece, add_special_tokens=False)["input_ids"]]
        else:
            steps += [[digits[d] for d in piece], digits, digits]
    steps.append([tokenizer.eos_token_id])
    return [torch.tensor(allowed) for allowed in steps]


class ForcedAnswer(LogitsProcessor):
    """Masks every token but those :func:`answer_steps` allows at the current position of the response.

    Args:
        steps: Allowed token ids per response position.
        prompt_length: Length of the (left-padded) prompt, where the response starts.
    """

    def __init__(self, steps: list[torch.Tensor], prompt_length: int):
        self.steps, self.prompt_length = steps, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        allowed = self.steps[min(input_ids.shape[1] - self.prompt_length, len(self.steps) - 1)].to(scores.device)
        forced = torch.full_like(scores, -torch.inf)
        forced[:, allowed] = scores[:, allowed]
        return forced


def force_answers(model: Any, steps: list[torch.Tensor]) -> None:
    """Makes every ``model.generate`` call decode through :class:`ForcedAnswer`: the policy's and the loop's alike."""
    generate = model.generate

    def forced(**kwargs: Any) -> torch.Tensor:
        processor = ForcedAnswer(steps, kwargs["input_ids"].shape[1])
        return generate(**kwargs, logits_processor=LogitsProcessorList([processor]))

    model.generate = forced


def build_samples(out: Path, samples: int, seed: int) -> tuple[Path, int]:
    """Synthetic evaluation sets of exactly ``samples`` rows: a quarter ReasonSeg val, the rest RefCOCOg test.

    Returns:
        The directory of the parquet files and the ``data.limit`` that trims RefCOCOg to its share.
    """
    reasonseg = max(1, samples // 4)
    refcocog = samples - reasonseg
    # Every third synthetic RefCOCOg image is a test image with 4 rows.
    eval_dir = build_eval_sets(out, seed, refer_images=3 * -(-refcocog // 4), reasonseg_images=reasonseg)
    return eval_dir, refcocog


def run_loop(
    samples: Sequence[EvalSample | BadSample],
    policy: TransformersPolicy,
    predictor: SAM2ImagePredictor,
    cfg: EvalConfig,
) -> dict[str, SegMetrics]:
    """One generate call and one SAM2 predictor call per sample; the metrics per dataset.

    Raises:
        ValueError: For a row that cannot be evaluated (the synthetic sets have none).
    """
    processor, model = policy.processor, policy.model
    metrics: dict[str, SegMetrics] = defaultdict(SegMetrics)
    for sample in samples:
        if isinstance(sample, BadSample):
            raise ValueError(f"{sample.uid}: {sample.error}")
        episode = SamR1Episode(sample)  # the evaluator's prompt, parser and coordinate mapping
        ((text, images),) = chat_inputs(processor, [episode.next_messages()])
        inputs = processor(text=[text], images=images, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=policy.generation.max_new_tokens,
                repetition_penalty=policy.generation.repetition_penalty,
                do_sample=False,
            )
        answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        prompts = episode.observe_response(answer)
        mask = None
        if prompts:
            (prompt,) = prompts
            predictor.set_image(sample.image)
            masks, _, _ = predictor.predict(
                point_coords=np.array(prompt.points, np.float32),
                point_labels=np.array(prompt.labels),
                box=np.array(prompt.box, np.float32),
                multimask_output=False,
            )
            mask = masks[0]
        metrics[sample.dataset].update(mask, sample.labels)
    return dict(metrics)


def same_metrics(
    batched: dict[str, dict[str, Any]], loop: dict[str, dict[str, Any]], gt_areas: dict[str, list[int]]
) -> bool:
    """Whether two runs' per-dataset ``SegMetrics.summary()`` agree: the same n, and gIoU and cIoU as close as masks
    that differ in at most :data:`FLIP_PIXELS` pixels each can leave them.

    Changing a sample's I and U by at most F moves I / U by at most 2F / U, and U is at least the target's area
    (an empty target counts as one pixel); likewise the sums of cIoU.

    Args:
        batched: The evaluator's metrics per dataset.
        loop: The loop's metrics per dataset.
        gt_areas: The target pixels (ignored ones left out) of every sample, per dataset.
    """
    if batched.keys() != loop.keys() or batched.keys() != gt_areas.keys():
        return False
    for name, areas in gt_areas.items():
        areas = [max(area, 1) for area in areas]
        giou_tolerance = 2 * FLIP_PIXELS * statistics.fmean(1 / area for area in areas)
        ciou_tolerance = 2 * FLIP_PIXELS * len(areas) / sum(areas)
        ours, theirs = batched[name], loop[name]
        if (
            ours["n"] != theirs["n"]
            or abs(ours["gIoU"] - theirs["gIoU"]) > giou_tolerance
            or abs(ours["cIoU"] - theirs["cIoU"]) > ciou_tolerance
        ):
            return False
    return True


def bench_line(samples: int, loop_s: float, batched_s: float, same: bool) -> str:
    return (
        f"bench-eval: samples={samples} loop_s={loop_s:.2f} batched_s={batched_s:.2f} "
        f"speedup={loop_s / batched_s:.2f} same_metrics={str(same).lower()}"
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=None, help="generation.batch_size (default: the config's)")
    parser.add_argument("--out", default="outputs/bench_eval", help="where the sets, the tiny model and the run go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic sets and the tiny model's weights")
    parser.add_argument(
        "--small-images",
        action="store_true",
        help="shrink the model's images to 16 tokens instead of the evaluation's 900 (quick runs, tests)",
    )
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error("--samples must be at least 2 (one ReasonSeg row and one RefCOCOg row)")
    out = Path(args.out).resolve()
    run_dir = out / "run"
    # The evaluator resumes from the records it finds; a benchmark must evaluate every sample again.
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the benchmark's line alone
        eval_dir, limit = build_samples(out / "data", args.samples, args.seed)
        max_pixels = SMALL_IMAGE_MAX_PIXELS if args.small_images else QWEN2_5_VL_MAX_PIXELS
        model = build_tiny_qwen2_5_vl(out / "tiny_qwen2_5_vl", seed=args.seed, max_pixels=max_pixels)
        overrides = [
            "mode=samr1",
            "reward_server=tiny_cpu",
            f"model.path={model}",
            "model.backend=transformers",
            f"data.files=[{eval_dir}]",
            f"data.limit={limit}",
            f"output_dir={run_dir}",
            "report=false",
        ]
        if args.batch_size is not None:
            overrides.append(f"generation.batch_size={args.batch_size}")
        cfg = eval_config(compose_recipe("evaluate", overrides))
        policy = build_policy(cfg, get_mode(cfg.mode))
        steps = answer_steps(policy.processor.tokenizer)
        # The evaluator decodes with the policy's settings; its fingerprint reads the config's.
        cfg.generation.max_new_tokens = policy.generation.max_new_tokens = len(steps)
        force_answers(policy.model, steps)
        engine = build_engine(cfg.sam)
        predictor = SAM2ImagePredictor(engine.model)
        predictor._bb_feat_sizes = engine.feature_sizes  # the predictor assumes 1024 px inputs
        # One untimed sample warms both paths' one-time costs (lazy initialisation, first kernels) up.
        run_loop([next(iter_samples(cfg.data_files(), limit=1))], policy, predictor, cfg)

        started = time.perf_counter()
        summary = evaluate(cfg, policy=policy, engine=engine)
        batched_s = time.perf_counter() - started
        started = time.perf_counter()  # the loop reads its rows too, as the evaluator does
        samples = list(iter_samples(cfg.data_files(), limit=cfg.data.limit))
        loop = run_loop(samples, policy, predictor, cfg)
        loop_s = time.perf_counter() - started
    loop_metrics = {name: metrics.summary() for name, metrics in loop.items()}
    gt_areas: dict[str, list[int]] = defaultdict(list)
    for sample in samples:
        gt_areas[sample.dataset].append(int(np.count_nonzero(sample.labels == 1)))
    for name, values in loop_metrics.items():
        ours = summary["datasets"].get(name, {})
        differences = {key: ours.get(key, float("nan")) - values[key] for key in ("gIoU", "cIoU")}
        print(f"{name}: batched minus loop {differences}", file=sys.stderr)
    line = bench_line(args.samples, loop_s, batched_s, same_metrics(summary["datasets"], loop_metrics, gt_areas))
    print(line, flush=True)
    return line


if __name__ == "__main__":
    main()
