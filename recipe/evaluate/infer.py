"""Segment one image: ``python -m recipe.evaluate.infer --model CKPT --image IMG --question "..."`` (``make infer``).

The image and question run exactly as an evaluation sample does: the model sees the 840x840 image data_prep would
store for the image, SAM2 segments the original, the mode builds its episode and the evaluator's policy (vLLM on a
GPU, transformers on a CPU: ``model.backend=auto``) and SAM2 engine drive it through the shared workflow. The
config is the evaluator's (``conf/evaluate.yaml``), so its Hydra overrides apply (``reward_server.engine.*``,
``generation.*``, ``veteran.*``, ``model.*``).

The command prints each step's reasoning and answer and writes, under ``--out``, one PNG per step (the original image
with SAM2's mask, the box and the clicks), the final mask as a PNG and as COCO RLE JSON. Bad inputs, and a model
whose answers give no mask, end with a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from recipe.evaluate.config import EvalConfig, eval_config
from recipe.evaluate.modes import get_mode
from recipe.evaluate.records import object_records, prompt_record
from recipe.evaluate.samples import EvalSample
from recipe.evaluate.segmenter import BatchedSegmenter
from recipe.task.answer import THINK_CLOSE, THINK_OPEN
from recipe.task.episodes import NO_TARGET, Step, run_episodes
from recipe.task.panels import draw_step
from recipe.verl_runtime.compose import compose_recipe
from reward_server.images import model_image_jpeg, to_rgb
from reward_server.masks import encode_rle

MODES = ("samr1", "veteran")
# The answer fields each turn needs for a SAM2 prompt, to say which one failed.
PROMPT_FIELDS = {"samr1": ("bbox_2d", "point_2d"), "veteran": ("bbox_2d",), "refinement": ("pos_point", "neg_point")}


class InferError(ValueError):
    """An input that cannot be segmented, or answers that gave no mask; the command line exits 2 with it."""


@dataclass(frozen=True)
class StepResult:
    """One turn of the model.

    Attributes:
        kind: ``grounding`` or ``refinement``.
        response: The model's whole answer.
        reasoning: The text inside ``<think>``, or None.
        answer: The parsed JSON answer, in the model's 840x840 coordinates, or None.
        error: Why the answer gave no SAM2 prompt (or why SAM2 failed), or None.
        prompt: The SAM2 prompt in original-image pixels (``box``, ``points``, ``labels``), or None.
        mask: SAM2's bool ``(H, W)`` mask at the original resolution (several objects: their union), or None.
        score: SAM2's predicted IoU of the mask, or None.
        objects: A turn that segmented several objects: each one's ``prompt`` and ``mask`` (COCO RLE), as the
            evaluator records them; else None.
    """

    kind: str
    response: str
    reasoning: str | None
    answer: Any
    error: str | None
    prompt: dict[str, Any] | None
    mask: np.ndarray | None
    score: float | None
    objects: list[dict[str, Any]] | None = None

    def drawn(self) -> dict[str, Any]:
        """The turn as :func:`recipe.task.panels.draw_step` draws it."""
        mask = {} if self.mask is None else {"mask": encode_rle(self.mask)}
        return {"prompt": self.prompt, **mask, "objects": self.objects}


@dataclass(frozen=True)
class InferResult:
    """What the model and SAM2 did with one image and question.

    Attributes:
        question: The question.
        mode: ``samr1`` or ``veteran``.
        image: The original RGB image.
        steps: Every turn, in order.
        termination: How the episode ended, as in the evaluator's records (``answered``, ``stop``, ``max_steps``,
            ``no_target``, ``invalid_answer``, ``invalid_grounding``, ``invalid_refinement``, ``sam_error``).
    """

    question: str
    mode: str
    image: np.ndarray
    steps: list[StepResult]
    termination: str | None

    @property
    def no_target(self) -> bool:
        """Whether the model answered that nothing in the image matches (``generalized=true``)."""
        return self.termination == NO_TARGET

    @property
    def mask(self) -> np.ndarray | None:
        """The final mask: the last one SAM2 produced, as the evaluator scores it (empty for "no object"); None when
        there is none."""
        if self.no_target:
            return np.zeros(self.image.shape[:2], bool)
        masks = [step.mask for step in self.steps if step.mask is not None]
        return masks[-1] if masks else None

    @property
    def failure(self) -> str | None:
        """Why there is no final mask (the last turn's error), or None."""
        if self.mask is not None:
            return None
        reason = self.steps[-1].error if self.steps else None
        return f"no mask ({self.termination}): {reason or 'no answer'}"


def load_image(image: str | Path | bytes | Image.Image | np.ndarray) -> np.ndarray:
    """An RGB uint8 array from a file path, encoded bytes, a PIL image or an array.

    Raises:
        InferError: When the file does not exist or is not a readable image.
    """
    name = ""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InferError(f"image {path} does not exist or is not a file")
        name, image = f" {path}", path.read_bytes()
    try:
        return to_rgb(image)
    except ValueError as err:
        raise InferError(f"unreadable image{name}: {str(err).splitlines()[0]}") from err


def check_question(question: Any) -> None:
    """Raises :class:`InferError` unless ``question`` is a non-empty string."""
    if not isinstance(question, str) or not question.strip():
        raise InferError("the question is empty")


def model_image(image: np.ndarray) -> np.ndarray:
    """The 840x840 image the model sees, exactly as data_prep stores it in evaluation rows."""
    return to_rgb(model_image_jpeg(Image.fromarray(image)))


def infer_config(
    mode: str = "samr1", model: str | None = None, overrides: Sequence[str] = (), sam_checkpoint: str | None = None
) -> EvalConfig:
    """The evaluator's config (``conf/evaluate.yaml``) for ``mode`` with Hydra ``overrides``.

    ``model`` and ``sam_checkpoint`` are set after composing, so paths need no Hydra quoting; they win over the
    overrides.

    Raises:
        InferError: For a mode other than ``samr1`` or ``veteran``, or overrides that do not compose.
    """
    if mode not in MODES:
        raise InferError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    try:
        cfg = eval_config(compose_recipe("evaluate", [f"mode={mode}", *overrides]))
    except (HydraException, OmegaConfBaseException) as err:
        raise InferError(f"bad override: {str(err).splitlines()[0]}") from err
    if cfg.mode != mode:
        raise InferError(f"mode is set by --mode ({mode}), not by an override ({cfg.mode})")
    if model is not None:
        cfg.model.path = model
    if sam_checkpoint is not None:
        cfg.sam.checkpoint = sam_checkpoint
    return cfg


def _reasoning(response: str) -> str | None:
    start, end = response.find(THINK_OPEN), response.find(THINK_CLOSE)
    return response[start + len(THINK_OPEN) : end].strip() if 0 <= start < end else None


def _step_error(step: Step, mode: str) -> str | None:
    if step.result is not None:
        return None if step.result.ok else f"SAM2 failed: {step.result.error}"
    if step.parsed.has_json and not isinstance(step.parsed.json_value, dict):  # a list: a generalized answer
        objects = step.parsed.objects(with_point=mode == "samr1", with_label=mode == "samr1")
        return objects.error
    if step.parsed.answer_error:
        return step.parsed.answer_error
    for name in PROMPT_FIELDS["refinement" if step.kind == "refinement" else mode]:
        field = getattr(step.parsed, name)()
        if not field.ok:
            return f"{name}: {field.error}"
    return None  # a refinement answer of (null, null): the model accepts the mask


def step_result(step: Step, mode: str) -> StepResult:
    """A workflow step as a :class:`StepResult` (the prompt as the evaluator records it)."""
    result = step.result if step.result is not None and step.result.ok else None
    return StepResult(
        kind=step.kind,
        response=step.response,
        reasoning=_reasoning(step.response),
        answer=step.parsed.json_value if step.parsed.has_json else None,
        error=_step_error(step, mode),
        prompt=prompt_record(step),
        mask=None if result is None else result.mask_array(),
        score=None if result is None else result.score,
        objects=object_records(step),
    )


class Inferencer:
    """A policy and a SAM2 engine, loaded once, that segment images one at a time.

    Args:
        cfg: The evaluator's config (:func:`infer_config`); ``mode`` is ``samr1`` or ``veteran``.
        policy: A policy to use instead of building ``cfg.model`` (tests).
        engine: A SAM2 engine (or fake) to use instead of building ``cfg.sam`` (tests).

    Raises:
        InferError: For another mode.
        ValueError: When SAM2 or the model cannot be built (no checkpoint, no ``model.path``).
    """

    def __init__(self, cfg: EvalConfig, policy: Any = None, engine: Any = None):
        if cfg.mode not in MODES:
            raise InferError(f"unknown mode {cfg.mode!r}; choose one of {', '.join(MODES)}")
        from recipe.evaluate.policies import build_policy
        from reward_server.segmenters import build_engine

        self.cfg = cfg
        # SAM2 first: a missing checkpoint fails before minutes of model loading.
        self.segmenter = BatchedSegmenter(engine if engine is not None else build_engine(cfg.sam))
        self.policy = policy if policy is not None else build_policy(cfg, get_mode(cfg.mode))

    def segment(
        self,
        image: str | Path | bytes | Image.Image | np.ndarray,
        question: str,
        on_step: Callable[[InferResult], None] | None = None,
    ) -> InferResult:
        """Runs one episode on ``image`` (a path, bytes, PIL image or RGB array) and ``question``.

        Args:
            image: A path, encoded bytes, a PIL image or an RGB array.
            question: The referring expression or question.
            on_step: Called after each turn with the result so far (the steps until then; ``termination`` None
                until the episode ends), so a page can show steps while the model still works on the next one.

        Raises:
            InferError: When the image cannot be read or the question is empty.
        """
        check_question(question)
        original = load_image(image)
        labels = np.zeros(original.shape[:2], np.uint8)  # no ground truth: the modes do not read it
        sample = EvalSample("infer", "infer", question, model_image(original), original, labels)
        episode = get_mode(self.cfg.mode).build(sample, self.cfg)
        steps: list[StepResult] = []

        def snapshot() -> InferResult:
            # Finished steps never change, so each is converted (and its mask decoded) once.
            steps.extend(step_result(step, self.cfg.mode) for step in episode.steps[len(steps) :])
            return InferResult(question, self.cfg.mode, original, list(steps), episode.termination)

        on_round = None if on_step is None else lambda: on_step(snapshot())
        asyncio.run(run_episodes([episode], self.policy, self.segmenter, on_round=on_round))
        return snapshot()


def segment(
    image: str | Path | bytes | Image.Image | np.ndarray,
    question: str,
    mode: str = "samr1",
    model: str | None = None,
    overrides: Sequence[str] = (),
    policy: Any = None,
    engine: Any = None,
) -> InferResult:
    """Segments one image: loads the model and SAM2 (:class:`Inferencer` keeps them for more images) and runs it.

    Args:
        image: A path, encoded bytes, a PIL image or an RGB array.
        question: The referring expression or question.
        mode: ``samr1`` (one turn: box and point) or ``veteran`` (grounding, then refinement clicks).
        model: Hugging Face checkpoint directory (not needed with ``policy``).
        overrides: Hydra overrides of ``conf/evaluate.yaml`` (``reward_server=tiny_cpu``,
            ``reward_server.engine.checkpoint=...``, ``generation.max_new_tokens=...``).
        policy: A policy instead of the model (tests).
        engine: A SAM2 engine instead of ``reward_server.engine`` (tests).

    Raises:
        InferError: For a bad image, question, mode or override.
    """
    check_question(question)  # both before minutes of model loading
    image = load_image(image)
    return Inferencer(infer_config(mode, model, overrides), policy, engine).segment(image, question)


def write_outputs(result: InferResult, out_dir: str | Path) -> list[Path]:
    """Writes ``step-<i>.png`` per step, ``mask.png`` (0/255) and ``mask.json`` (COCO RLE); returns the paths.

    Step images of an earlier, longer run in ``out_dir`` are removed, so every file there belongs to this result.

    Raises:
        InferError: When the result has no mask.
    """
    if result.mask is None:
        raise InferError(result.failure)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("step-*.png"):
        stale.unlink()
    written = []
    for index, step in enumerate(result.steps):
        path = out_dir / f"step-{index}.png"
        Image.fromarray(draw_step(result.image, step.drawn())).save(path)
        written.append(path)
    mask_png, mask_json = out_dir / "mask.png", out_dir / "mask.json"
    Image.fromarray(result.mask.astype(np.uint8) * 255).save(mask_png)
    mask_json.write_text(json.dumps(encode_rle(result.mask)) + "\n")
    return [*written, mask_png, mask_json]


def describe(result: InferResult) -> str:
    """Each step's reasoning, answer, SAM2 prompt and mask, as the command line prints them."""
    lines = [f"Question: {result.question}"]
    for index, step in enumerate(result.steps):
        lines += [f"\n[step {index}: {step.kind}]", f"reasoning: {step.reasoning or '(none)'}"]
        lines.append(f"answer: {json.dumps(step.answer) if step.answer is not None else '(none)'}")
        if step.prompt is not None:
            lines.append(f"SAM2 prompt (original pixels): {json.dumps(step.prompt)}")
        for number, item in enumerate(step.objects or (), 1):
            lines.append(f"object {number}: SAM2 prompt (original pixels): {json.dumps(item['prompt'])}")
        if step.mask is not None:
            lines.append(f"mask: {int(step.mask.sum())} pixels, SAM2 score {step.score:.3f}")
        elif step.error:
            lines.append(f"no mask: {step.error}")
        elif result.no_target and step is result.steps[-1]:
            lines.append("no object: the model answers that nothing in the image matches")
        else:
            lines.append("stop: the model accepts the mask")
    lines.append(f"\nended: {result.termination}")
    return "\n".join(lines)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every command that loads a model and SAM2 (this one and the demo page)."""
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--mode", default="samr1", choices=MODES)
    parser.add_argument("--sam-preset", help="conf/reward_server preset, e.g. tiny_cpu (default: large)")
    parser.add_argument("--sam-checkpoint", help="SAM2 checkpoint (reward_server.engine.checkpoint)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/evaluate.yaml, e.g. veteran.max_steps=5")


def check_model(path: str) -> None:
    """Raises :class:`InferError` unless the model directory exists (before minutes of loading)."""
    if not Path(path).exists():
        raise InferError(f"model {path} does not exist (give a Hugging Face checkpoint directory)")


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The config the options of :func:`add_model_arguments` ask for.

    Raises:
        InferError: When an override does not compose.
    """
    overrides = [*([f"reward_server={args.sam_preset}"] if args.sam_preset else []), *args.overrides]
    return infer_config(args.mode, args.model, overrides, args.sam_checkpoint)


def one_line(err: BaseException) -> str:
    """An expected failure as the one line a command prints instead of a traceback."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recipe.evaluate.infer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--question", required=True, help="the referring expression or question")
    parser.add_argument("--out", help="output directory (default: outputs/infer/<image stem>)")
    return parser


def run(args: argparse.Namespace) -> Path:
    """Checks the inputs, segments, prints the steps and writes the outputs; returns the output directory.

    Raises:
        InferError: For bad inputs or answers without a mask.
        ValueError, OSError: When SAM2 or the model cannot be loaded.
    """
    check_question(args.question)
    check_model(args.model)
    image = load_image(args.image)  # before minutes of model loading
    result = Inferencer(config_from_args(args)).segment(image, args.question)
    print(describe(result), flush=True)
    out_dir = Path(args.out or Path("outputs/infer") / Path(args.image).stem)
    write_outputs(result, out_dir)
    mask = result.mask
    print(f"final mask: {int(mask.sum())} of {mask.shape[0]}x{mask.shape[1]} pixels; written to {out_dir}", flush=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (2 with a one-line message on stderr for every expected failure)."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as err:  # InferError, SAM2 or model loading: a message, not a traceback
        print(f"infer: {one_line(err)}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
