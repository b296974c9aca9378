"""Episodes: what the policy is asked and what SAM2 is sent, turn by turn, with no I/O of their own.

Both recipes and the evaluator depend on these types: SAM-Veteran's workflow loop runs an :class:`Episode` inside
verl, evaluation and ``make infer`` run episodes of every mode (the workflow, and the single-turn ones built on
:class:`SingleTurnEpisode`) through :func:`run_episodes`.

SAM-Veteran's human-like workflow (Figure 1) is :class:`Episode`:

grounding box -> SAM2 mask -> green overlay -> ``pos_point`` / ``neg_point`` or (null, null) -> SAM2 refinement
(the initial box, the previous low-res logits, the new clicks) -> ... until (null, null) or ``max_steps``.

An :class:`Episode` says what to ask the policy next (:meth:`Episode.next_messages`) and what to ask SAM2 next
(:meth:`Episode.observe_response`), and records the answers (:meth:`Episode.observe_mask`). :func:`run_episodes`
drives many episodes in lockstep through any policy (``generate(messages batch) -> texts``) and any segmenter with
the SAM2 client's ``segment`` signature, so verl's agent loop and the batched evaluator share the same steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
from PIL import Image

from recipe.common.answer import ParsedResponse, parse_response
from recipe.common.coordinates import Coordinates
from recipe.common.dataset_rows import GROUNDING, MASK_COMPREHENSION
from recipe.common.overlay import overlay_mask
from recipe.common.prompts import asks_for_reasoning, build_prompt
from reward_server.masks import resize_mask, scale_xy
from reward_server.protocol import GroundTruthRef, ImageRef, Prompt, SegResult

Messages = list[dict[str, Any]]


class Policy(Protocol):
    async def generate(self, batch: Sequence[Messages]) -> list[str]: ...


class Segmenter(Protocol):
    async def segment(
        self, image, prompts, ground_truth=None, return_logits=False, return_edge_iou=False
    ) -> list[SegResult]: ...


@dataclass
class WorkflowConfig:
    """``veteran.workflow``: the box -> mask -> clicks workflow, on-policy in training and in evaluation.

    Attributes:
        max_steps: Refinement steps at most (the paper evaluates with 3, its 32B model with 5).
        resend_points: Send every earlier click again with each refinement (off, as in the paper: only the new
            clicks, with the initial box and the previous logits; docs/conventions.md).
    """

    max_steps: int = 3
    resend_points: bool = False

    def __post_init__(self):
        if self.max_steps < 0:
            raise ValueError(f"veteran.workflow.max_steps must be >= 0, got {self.max_steps}")


@dataclass
class Step:
    """One turn: the answer, the SAM2 prompt it led to, and SAM2's mask (with IoUs when the GT is known)."""

    kind: str  # "grounding" or "refinement"
    response: str
    parsed: ParsedResponse
    prompt: Prompt | None = None
    result: SegResult | None = None

    @property
    def iou(self) -> float | None:
        return None if self.result is None else self.result.iou


@dataclass
class Episode:
    """One question on one image (RGB array, the size the model's coordinates refer to).

    Args:
        question: The referring expression or question.
        image: The image the model sees.
        ground_truth: COCO RLE of the target at the SAM2 image's size, for IoUs per step (optional).
        max_steps: Refinement steps at most (the paper evaluates with 3).
        resend_points: Send every earlier click again with each refinement (default: only the new ones).
        grounding_cot: Grounding asks for ``<think>`` first (False: the answer-only prompt and tag rule); a
            keyword with no default, as ``mask_cot``: the caller passes its reward config's (SAM-Veteran's
            ``VeteranRewardConfig``) or the evaluator's value, so the two can never disagree.
        mask_cot: Likewise for refinement turns.
        coordinates: The policy's coordinate convention (:func:`recipe.common.coordinates.model_coordinates`).
        segment_image: The image SAM2 segments when it is not ``image`` (evaluation: the original, as
            docs/conventions.md, Spaces and coordinates, says). The model's coordinates are scaled to it, and its
            masks are resized to ``image`` for the overlay.
    """

    question: str
    image: np.ndarray
    ground_truth: dict[str, Any] | None = None
    max_steps: int = WorkflowConfig.max_steps
    resend_points: bool = WorkflowConfig.resend_points
    segment_image: np.ndarray | None = None
    grounding_cot: bool = field(kw_only=True)
    mask_cot: bool = field(kw_only=True)
    coordinates: Coordinates = field(default=Coordinates.PIXELS, kw_only=True)
    steps: list[Step] = field(default_factory=list)
    termination: str | None = None
    _pending: Step | None = None

    @cached_property
    def image_ref(self) -> ImageRef:
        """The image keyed for SAM2, hashed once and only when a driver sends it (verl's loop keys its own bytes)."""
        return ImageRef.of(self.image if self.segment_image is None else self.segment_image)

    @cached_property
    def gt_ref(self) -> GroundTruthRef | None:
        return None if self.ground_truth is None else GroundTruthRef.of(self.ground_truth)

    @property
    def done(self) -> bool:
        return self.termination is not None

    @property
    def masks(self) -> list[SegResult]:
        return [step.result for step in self.steps if step.result is not None and step.result.ok]

    @property
    def final(self) -> SegResult | None:
        """The last mask SAM2 produced (None when grounding failed)."""
        return self.masks[-1] if self.masks else None

    @property
    def task(self) -> str:
        """The task the next turn is: ``grounding`` first, then ``mask_comprehension`` (a refinement turn)."""
        return MASK_COMPREHENSION if self.steps else GROUNDING

    @property
    def reasoning(self) -> bool:
        """Whether the next turn's prompt and tag rule include ``<think>`` (:func:`asks_for_reasoning` of
        :attr:`task`)."""
        return asks_for_reasoning(self.task, self.grounding_cot, self.mask_cot)

    def next_messages(self) -> Messages:
        """The single-turn prompt of the next step, the first included: the image and ``Q^B`` first, then the
        overlay and ``Q^P``; each the answer-only variant when :attr:`reasoning` is off."""
        if not self.steps:
            image = Image.fromarray(self.image)
        else:
            mask = resize_mask(self.final.mask_array(), self.image.shape[:2])
            image = Image.fromarray(overlay_mask(self.image, mask))
        text = build_prompt(self.task, self.question, reasoning=self.reasoning)
        content = [{"type": "image", "image": image}, {"type": "text", "text": text}]
        return [{"role": "user", "content": content}]

    def observe_response(self, text: str) -> Prompt | None:
        """Parses the policy's answer; returns the SAM2 prompt to run, or None when the episode ends here."""
        height, width = self.image.shape[:2]
        parsed = parse_response(text, (height, width), self.reasoning, self.coordinates)
        if not self.steps:
            step = Step("grounding", text, parsed)
            box = parsed.bbox_2d()
            if not box.ok:
                return self._end(step, "invalid_grounding")
            step.prompt = Prompt(box=self._to_sam(box.value))
        else:
            step = Step("refinement", text, parsed)
            answer = parsed.clicks()
            if answer is None:
                return self._end(step, "invalid_refinement")
            pos, neg = (None if point is None else self._to_sam(point) for point in answer)
            if pos is None and neg is None:
                return self._end(step, "stop")
            earlier = [past.prompt for past in self.steps if past.kind == "refinement" and past.prompt is not None]
            step.prompt = Prompt.from_clicks(
                pos,
                neg,
                box=self.steps[0].prompt.box,  # the initial grounding box, at every refinement step
                mask_input=self.final.logits,
                earlier=earlier if self.resend_points else (),
            )
        self._pending = step
        return step.prompt

    def observe_mask(self, result: SegResult) -> None:
        """Records SAM2's answer to the pending prompt and decides whether another step follows."""
        step, self._pending = self._pending, None
        step.result = result
        self.steps.append(step)
        if not result.ok:
            self.termination = "sam_error"
        elif sum(s.kind == "refinement" for s in self.steps) >= self.max_steps:
            self.termination = "max_steps"

    def _to_sam(self, coords: Sequence[float]) -> tuple[float, ...]:
        """Model-space ``(x, y, ...)`` in the SAM2 image's pixels (unchanged when SAM2 sees the model's image)."""
        if self.segment_image is None:
            return tuple(coords)
        return tuple(float(v) for v in scale_xy(coords, self.image.shape[:2], self.segment_image.shape[:2]))

    def _end(self, step: Step, reason: str) -> None:
        self.steps.append(step)
        self.termination = reason
        return None


@dataclass
class SingleTurnEpisode:
    """:class:`Episode`'s interface for modes that ask the policy once and send SAM2 at most one prompt.

    A subclass says what to ask (``next_messages``), turns the answer into a :class:`Step` and passes it to
    :meth:`_record`, and names the image SAM2 segments (``image_ref``). Answers are parsed under the policy's
    ``coordinates``.
    """

    coordinates: Coordinates = field(default=Coordinates.PIXELS, kw_only=True)
    steps: list[Step] = field(default_factory=list, kw_only=True)
    termination: str | None = field(default=None, kw_only=True)
    gt_ref = None  # evaluation scores masks itself, with LISA's ignore pixels, at the original resolution

    @property
    def done(self) -> bool:
        return self.termination is not None

    def observe_mask(self, result: SegResult) -> None:
        self.steps[-1].result = result
        self.termination = "answered" if result.ok else "sam_error"

    def _record(self, step: Step) -> Prompt | None:
        self.steps.append(step)
        if step.prompt is None:
            self.termination = "invalid_answer"
        return step.prompt


async def run_episodes(
    episodes: Sequence[Episode],
    policy: Policy,
    segmenter: Segmenter,
    on_round: Callable[[], None] | None = None,
) -> None:
    """Advances all episodes in lockstep: one batched policy call and concurrent SAM2 calls per step.

    Args:
        episodes: The episodes to finish; each ends with its ``termination`` set.
        policy: Answers a batch of messages.
        segmenter: SAM2, or anything with its client's ``segment`` signature.
        on_round: Called after each round, once its masks are recorded, so an interactive caller (the demo page)
            can show each step as it appears instead of only when every episode has ended.
    """
    while active := [episode for episode in episodes if not episode.done]:
        texts = await policy.generate([episode.next_messages() for episode in active])
        prompts = [(episode, episode.observe_response(text)) for episode, text in zip(active, texts, strict=True)]
        asking = [(episode, prompt) for episode, prompt in prompts if prompt is not None]
        results = await asyncio.gather(
            *(
                segmenter.segment(e.image_ref, [p], ground_truth=e.gt_ref, return_logits=True, return_edge_iou=True)
                for e, p in asking
            )
        )
        for (episode, _), (result,) in zip(asking, results, strict=True):
            episode.observe_mask(result)
        if on_round is not None:
            on_round()
