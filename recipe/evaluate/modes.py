"""Evaluation modes: how one sample becomes an episode that :func:`recipe.task.episodes.run_episodes` drives.

Every mode shows the model the 840x840 image and sends SAM2 the original image, the model's coordinates scaled back
(``x * W / 840``, ``y * H / 840``; docs/conventions.md, Spaces and coordinates). A generalized row (several objects
or none), or every row with ``generalized=true``, is asked for a list of objects; their masks' union is the
prediction, and a "none" answer predicts an empty mask:

- ``samr1``: one turn with SAM-R1's prompt; box + point (a positive click) -> SAM2.
- ``veteran``: SAM-Veteran's workflow, grounding then up to ``max_steps`` refinement clicks, stopped by the model.
- ``baseline``: the workflow's grounding turn only, box -> SAM2 (the papers' "Qwen2.5-VL + SAM2" row).
- ``oracle_box``: the ground-truth box -> SAM2, no model (the segmenter's upper bound).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from PIL import Image

from recipe.evaluate.config import EvalConfig, GenerationConfig
from recipe.evaluate.samples import EvalSample
from recipe.task.answer import parse_response
from recipe.task.coordinates import Coordinates, model_coordinates
from recipe.task.episodes import Episode, Messages, SingleTurnEpisode, Step
from recipe.task.prompts import build_prompt
from recipe.verl_runtime.registration import unique
from reward_server.masks import model_to_original
from reward_server.protocol import ImageRef, Prompt


@dataclass
class _SampleEpisode(SingleTurnEpisode):
    """A single-turn episode on an evaluation sample: SAM2 segments the original image."""

    sample: EvalSample

    @cached_property
    def image_ref(self) -> ImageRef:
        return ImageRef.of(self.sample.image)


@dataclass
class SamR1Episode(_SampleEpisode):
    """SAM-R1's single shot: the answer's box and point, sent when both are valid, as for the training reward (the
    label is no SAM2 prompt: it only decides the segmentation-format reward); with ``objects``, each listed object's.
    """

    objects: bool = field(default=False, kw_only=True)

    def next_messages(self) -> Messages:
        image = Image.fromarray(self.sample.model_image)
        text = build_prompt("samr1", self.sample.question, objects=self.objects)
        return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]

    def observe_response(self, text: str) -> list[Prompt]:
        parsed = parse_response(text, coordinates=self.coordinates)
        step = Step("grounding", text, parsed)
        hw = self.sample.image.shape[:2]
        if self.objects:
            answered = parsed.objects(with_point=True, with_label=True)
            pairs = [(item.box, item.point) for item in answered.value or ()]
        else:
            box, point = parsed.bbox_2d(), parsed.point_2d()
            pairs = [(box.value, point.value)] if box.ok and point.ok else []
        step.prompts = [
            Prompt(box=_to_original(box, hw), points=(_to_original(point, hw),), labels=(1,)) for box, point in pairs
        ]
        return self._record(step, none=self.objects and answered.ok)


@dataclass
class OracleBoxEpisode(_SampleEpisode):
    """The ground-truth box at the original resolution (a generalized row's: each object's; none for no target);
    the (empty) policy answer is ignored."""

    def next_messages(self) -> Messages:
        return []

    def observe_response(self, text: str) -> list[Prompt]:
        step = Step("grounding", text, parse_response(text))
        if self.sample.generalized:
            step.prompts = [Prompt(box=tuple(box)) for box in self.sample.object_boxes]
            return self._record(step, none=True)
        box = self.sample.gt_box
        step.prompts = [] if box is None else [Prompt(box=tuple(box))]
        return self._record(step)


def _to_original(coords: Sequence[float], image_hw: tuple[int, int]) -> tuple[float, ...]:
    return tuple(float(v) for v in model_to_original(coords, image_hw))


def policy_coordinates(cfg: EvalConfig) -> Coordinates:
    """The coordinate convention of the evaluated checkpoint (pixels when no model answers: ``oracle_box``)."""
    return Coordinates.PIXELS if cfg.model.path is None else model_coordinates(cfg.model.path)


def asks_for_objects(sample: EvalSample, cfg: EvalConfig) -> bool:
    """Whether ``sample`` is asked for a list of objects: a generalized row, or every row with ``generalized``."""
    return sample.generalized or cfg.generalized


def _workflow(sample: EvalSample, cfg: EvalConfig, max_steps: int) -> Episode:
    return Episode(
        sample.question,
        sample.model_image,
        max_steps=max_steps,
        resend_points=cfg.veteran.resend_points,
        grounding_cot=cfg.veteran.grounding_cot,
        mask_cot=cfg.veteran.mask_cot,
        coordinates=policy_coordinates(cfg),
        objects=asks_for_objects(sample, cfg),
        segment_image=sample.image,
    )


@dataclass(frozen=True)
class Mode:
    """An evaluation mode.

    Attributes:
        build: ``build(sample, config) -> episode``.
        needs_model: Whether a policy generates (``oracle_box`` needs none).
        repetition_penalty: The default when ``generation.repetition_penalty`` is null.
        iterative: Whether records have refinement steps (per-step IoU and termination are reported).
        max_new_tokens: The default when ``generation.max_new_tokens`` is null: at least the response length the
            mode's model was trained with (``conf/veteran.yaml`` ``data.max_response_length``; tested).
    """

    build: Callable[[EvalSample, EvalConfig], Any]
    needs_model: bool = True
    repetition_penalty: float = 1.0
    iterative: bool = False
    max_new_tokens: int = 1024

    def decoding(self, generation: GenerationConfig) -> GenerationConfig:
        """``generation`` as this mode decodes: the mode's ``max_new_tokens`` and ``repetition_penalty`` where null."""
        return replace(
            generation,
            max_new_tokens=self.max_new_tokens if generation.max_new_tokens is None else generation.max_new_tokens,
            repetition_penalty=(
                self.repetition_penalty if generation.repetition_penalty is None else generation.repetition_penalty
            ),
        )


MODES: dict[str, Mode] = {}
"""The evaluation modes by name, filled by :func:`register_mode`."""


def register_mode(name: str, mode: Mode) -> Mode:
    """Adds ``mode`` to :data:`MODES` as ``name``.

    Raises:
        ValueError: When another mode holds ``name``, naming both.
    """
    return unique("evaluation mode", MODES, name)(mode)


register_mode(
    "samr1",
    Mode(
        lambda sample, cfg: SamR1Episode(
            sample, coordinates=policy_coordinates(cfg), objects=asks_for_objects(sample, cfg)
        )
    ),
)
register_mode(
    "veteran",
    Mode(
        lambda sample, cfg: _workflow(sample, cfg, cfg.veteran.max_steps),
        repetition_penalty=1.1,
        iterative=True,
        max_new_tokens=1300,
    ),
)
register_mode("baseline", Mode(lambda sample, cfg: _workflow(sample, cfg, 0)))
register_mode("oracle_box", Mode(lambda sample, cfg: OracleBoxEpisode(sample), needs_model=False))


def get_mode(name: str) -> Mode:
    """The registered mode ``name``.

    Raises:
        ValueError: For an unknown name.
    """
    if name not in MODES:
        raise ValueError(f"unknown evaluation mode {name!r}; choose one of {sorted(MODES)}")
    return MODES[name]


class NullPolicy:
    """The policy of modes that need no model: an empty answer per episode."""

    seconds = 0.0

    async def generate(self, batch: Sequence[Messages]) -> list[str]:
        return ["" for _ in batch]
