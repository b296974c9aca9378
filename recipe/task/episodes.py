"""Episodes: what the policy is asked and what SAM2 is sent, turn by turn, with no I/O of their own.

Both recipes and the evaluator depend on these types: SAM-Veteran's workflow loop runs an :class:`Episode` inside
verl, evaluation and ``make infer`` run episodes of every mode (the workflow, and the single-turn ones built on
:class:`SingleTurnEpisode`) through :func:`run_episodes`.

SAM-Veteran's human-like workflow (Figure 1) is :class:`Episode`:

grounding box -> SAM2 mask -> green overlay -> ``pos_point`` / ``neg_point`` or (null, null) -> SAM2 refinement
(the initial box, the previous low-res logits, the new clicks) -> ... until (null, null) or ``max_steps``.

An :class:`Episode` says what to ask the policy next (:meth:`Episode.next_messages`) and what to ask SAM2 next
(:meth:`Episode.observe_response`: the prompts of one turn), and records the answers (:meth:`Episode.observe_mask`).
:func:`run_episodes` drives many episodes in lockstep through any policy (``generate(messages batch) -> texts``)
and any segmenter with the SAM2 client's ``segment`` signature, so verl's agent loop and the batched evaluator share
the same steps.

An episode with ``objects`` (a generalized row: several objects or none) asks for a list of boxes and segments each
one; the mask shown and scored is their union. Its grounding may answer ``[]`` ("none"): the episode then ends with
:data:`NO_TARGET` and predicts an empty mask. A refinement click goes to one object (:func:`route_click`), which
SAM2 refines with its own box and logits, and the union is taken again.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
from PIL import Image

from recipe.task.answer import MAX_OBJECTS, ParsedResponse, parse_response
from recipe.task.coordinates import Coordinates
from recipe.task.dataset_rows import GROUNDING, MASK_COMPREHENSION
from recipe.task.overlay import overlay_mask
from recipe.task.prompts import asks_for_reasoning, build_prompt
from reward_server.masks import decode_rle, edge_excluded_iou, encode_rle, mask_iou, resize_mask, scale_xy
from reward_server.protocol import GroundTruthRef, ImageRef, Prompt, SegResult

Messages = list[dict[str, Any]]

NO_TARGET = "no_target"
"""The termination of an episode whose answer was "none" (``[]``): a valid answer, predicting an empty mask."""


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
    """One turn: the answer, the SAM2 prompts it led to, and the mask in effect after it.

    Attributes:
        kind: ``grounding`` or ``refinement``.
        response: The answer's text.
        parsed: The answer parsed.
        prompts: The SAM2 prompts the turn sent: one, several (one per object of a generalized answer), or none.
        results: SAM2's answer to each prompt.
        result: The turn's mask: SAM2's answer to its one prompt, or the union of every object's mask after the turn
            (:func:`union_result`); the first failed answer when one failed; None when nothing was sent.
    """

    kind: str
    response: str
    parsed: ParsedResponse
    prompts: list[Prompt] = field(default_factory=list)
    results: list[SegResult] = field(default_factory=list)
    result: SegResult | None = None

    @property
    def prompt(self) -> Prompt | None:
        """The turn's prompt when it sent exactly one (every turn of the papers' single-object episodes)."""
        return self.prompts[0] if len(self.prompts) == 1 else None

    @property
    def iou(self) -> float | None:
        return None if self.result is None else self.result.iou


def union_result(results: Sequence[SegResult], ground_truth: dict[str, Any] | None = None) -> SegResult:
    """Several objects' masks as one result: their union, with its IoU and edge-excluded IoU against
    ``ground_truth`` (COCO RLE) when given, and no logits (each object keeps its own). One result is returned as it
    is; the first failed one stands for the turn.

    Raises:
        ValueError: For no results.
    """
    if not results:
        raise ValueError("no results to combine")
    failed = next((result for result in results if not result.ok), None)
    if failed is not None or len(results) == 1:
        return failed or results[0]
    union = np.logical_or.reduce([result.mask_array() for result in results])
    iou = edge_iou = None
    if ground_truth is not None:
        gt = decode_rle(ground_truth)
        iou, edge_iou = mask_iou(union, gt), edge_excluded_iou(union, gt)
    score = float(np.mean([result.score for result in results]))
    return SegResult(mask=encode_rle(union), score=score, iou=iou, edge_iou=edge_iou)


def route_click(point: Sequence[float], masks: Sequence[np.ndarray], boxes: Sequence[Sequence[float]]) -> int:
    """The object a refinement click on the union mask refines: the first whose mask holds the click, else the
    smallest whose box holds it, else the one whose box is nearest.

    Args:
        point: ``(x, y)`` in the masks' pixels.
        masks: Each object's current mask.
        boxes: Each object's box (xyxy, the masks' pixels).
    """
    x, y = float(point[0]), float(point[1])
    for index, mask in enumerate(masks):
        row, column = int(y), int(x)
        if 0 <= row < mask.shape[0] and 0 <= column < mask.shape[1] and mask[row, column]:
            return index
    inside = [i for i, b in enumerate(boxes) if b[0] <= x < b[2] and b[1] <= y < b[3]]
    if inside:
        return min(inside, key=lambda i: (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]))
    distance = [math.hypot(max(b[0] - x, 0.0, x - b[2]), max(b[1] - y, 0.0, y - b[3])) for b in boxes]
    return int(np.argmin(distance))


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
        coordinates: The policy's coordinate convention (:func:`recipe.task.coordinates.model_coordinates`).
        objects: Ask for a list of objects, or none (a generalized row; module docstring).
        max_objects: How many objects a generalized answer may list.
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
    objects: bool = field(default=False, kw_only=True)
    max_objects: int = field(default=MAX_OBJECTS, kw_only=True)
    steps: list[Step] = field(default_factory=list)
    termination: str | None = None
    _pending: Step | None = None
    # Per object: its grounding box (SAM2's pixels), its latest mask, the refinement prompts it was sent.
    _boxes: list[tuple[float, ...]] = field(default_factory=list, repr=False)
    _current: list[SegResult] = field(default_factory=list, repr=False)
    _sent: list[list[Prompt]] = field(default_factory=list, repr=False)
    _touched: list[int] = field(default_factory=list, repr=False)

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
        text = build_prompt(self.task, self.question, reasoning=self.reasoning, objects=self.objects)
        content = [{"type": "image", "image": image}, {"type": "text", "text": text}]
        return [{"role": "user", "content": content}]

    def observe_response(self, text: str) -> list[Prompt]:
        """Parses the policy's answer; returns the SAM2 prompts to run (one per object it touches), none when the
        episode ends here."""
        height, width = self.image.shape[:2]
        parsed = parse_response(text, (height, width), self.reasoning, self.coordinates)
        if not self.steps:
            step = Step("grounding", text, parsed)
            if self.objects:
                answered = parsed.objects(max_objects=self.max_objects)
                if not answered.ok:
                    return self._end(step, "invalid_grounding")
                if not answered.value:
                    return self._end(step, NO_TARGET)
                boxes = [item.box for item in answered.value]
            else:
                box = parsed.bbox_2d()
                if not box.ok:
                    return self._end(step, "invalid_grounding")
                boxes = [box.value]
            self._boxes = [self._to_sam(box) for box in boxes]
            self._sent = [[] for _ in boxes]
            self._touched = list(range(len(boxes)))
            step.prompts = [Prompt(box=box) for box in self._boxes]
        else:
            step = Step("refinement", text, parsed)
            answer = parsed.clicks()
            if answer is None:
                return self._end(step, "invalid_refinement")
            pos, neg = (None if point is None else self._to_sam(point) for point in answer)
            if pos is None and neg is None:
                return self._end(step, "stop")
            masks = [result.mask_array() for result in self._current] if len(self._boxes) > 1 else []
            clicks: dict[int, list[Sequence[float] | None]] = {}
            for slot, point in enumerate((pos, neg)):
                if point is not None:
                    index = route_click(point, masks, self._boxes) if masks else 0
                    clicks.setdefault(index, [None, None])[slot] = point
            self._touched = sorted(clicks)
            step.prompts = [
                Prompt.from_clicks(
                    *clicks[index],
                    box=self._boxes[index],  # the object's grounding box, at every refinement step
                    mask_input=self._current[index].logits,
                    earlier=self._sent[index] if self.resend_points else (),
                )
                for index in self._touched
            ]
        self._pending = step
        return step.prompts

    def observe_mask(self, results: Sequence[SegResult]) -> None:
        """Records SAM2's answers to the pending prompts and decides whether another step follows."""
        step, self._pending = self._pending, None
        step.results = list(results)
        if step.kind == "grounding":
            self._current = list(results)
        else:
            for index, prompt, result in zip(self._touched, step.prompts, results, strict=True):
                self._current[index] = result
                self._sent[index].append(prompt)
        failed = next((result for result in results if not result.ok), None)
        step.result = failed or union_result(self._current, self.ground_truth)
        self.steps.append(step)
        if failed is not None:
            self.termination = "sam_error"
        elif sum(s.kind == "refinement" for s in self.steps) >= self.max_steps:
            self.termination = "max_steps"

    def _to_sam(self, coords: Sequence[float]) -> tuple[float, ...]:
        """Model-space ``(x, y, ...)`` in the SAM2 image's pixels (unchanged when SAM2 sees the model's image)."""
        if self.segment_image is None:
            return tuple(coords)
        return tuple(float(v) for v in scale_xy(coords, self.image.shape[:2], self.segment_image.shape[:2]))

    def _end(self, step: Step, reason: str) -> list[Prompt]:
        self.steps.append(step)
        self.termination = reason
        return []


@dataclass
class SingleTurnEpisode:
    """:class:`Episode`'s interface for modes that ask the policy once and send SAM2 at most one prompt.

    A subclass says what to ask (``next_messages``), turns the answer into a :class:`Step` and passes it to
    :meth:`_record`, and names the image SAM2 segments (``image_ref``). Answers are parsed under the policy's
    ``coordinates``. A step with several prompts (a generalized answer's objects) predicts their union; a valid
    "none" ends the episode with :data:`NO_TARGET` and no prompt.
    """

    coordinates: Coordinates = field(default=Coordinates.PIXELS, kw_only=True)
    steps: list[Step] = field(default_factory=list, kw_only=True)
    termination: str | None = field(default=None, kw_only=True)
    gt_ref = None  # evaluation scores masks itself, with LISA's ignore pixels, at the original resolution

    @property
    def done(self) -> bool:
        return self.termination is not None

    def observe_mask(self, results: Sequence[SegResult]) -> None:
        step = self.steps[-1]
        step.results = list(results)
        step.result = union_result(results)
        self.termination = "answered" if step.result.ok else "sam_error"

    def _record(self, step: Step, none: bool = False) -> list[Prompt]:
        """Records the turn; ``none``: its answer was a valid "none" (no prompt, a valid end)."""
        self.steps.append(step)
        if not step.prompts:
            self.termination = NO_TARGET if none else "invalid_answer"
        return step.prompts


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
        asking = [(episode, sent) for episode, sent in prompts if sent]
        results = await asyncio.gather(
            *(
                segmenter.segment(e.image_ref, p, ground_truth=e.gt_ref, return_logits=True, return_edge_iou=True)
                for e, p in asking
            )
        )
        for (episode, _), answers in zip(asking, results, strict=True):
            episode.observe_mask(answers)
        if on_round is not None:
            on_round()
