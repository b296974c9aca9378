"""The total reward of each SAM-Veteran task for one response, with every component for logging.

Formatting (all tasks): +1 for the tag rule, +1 for a strictly parsable answer (a valid ``bbox_2d`` for grounding,
valid ``pos_point`` and ``neg_point``, ``null`` allowed, for the refinement tasks). A malformed answer earns only
what formatting it has, and SAM2 is not called. IoUs are edge-excluded (training rewards).

A generalized grounding row (``ground_truth.objects``: several objects or none) is answered with a list of boxes.
The box reward is each box's, matched one to one to the objects by box IoU (:mod:`recipe.task.matching`), summed
over the larger count; ``R_SAM`` is the edge-excluded IoU of the union of SAM2's masks with the union of the
objects. A correct "none" (``[]`` for no target) earns both in full; a box for an absent object earns neither.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recipe.task.answer import ParsedResponse, parse_response
from recipe.task.coordinates import Coordinates
from recipe.task.dataset_rows import AUXILIARY, GROUNDING, MASK_COMPREHENSION, WORKFLOW, GroundTruth, is_good_enough
from recipe.task.episodes import NO_TARGET, Step
from recipe.task.matching import match_boxes
from recipe.task.sam_steps import SAM_STEPS, encode_steps, step_json
from recipe.task.stored_logits import decode_logits
from recipe.veteran import reward_formulas as formulas
from recipe.veteran.reward_formulas import VeteranRewardConfig
from reward_server.client import SamClient
from reward_server.masks import decode_rle, edge_excluded_iou
from reward_server.protocol import ImageRef, Prompt

logger = logging.getLogger(__name__)

Response = str | ParsedResponse
"""A response as decoded text, or parsed by :func:`parse_answer`."""
Truth = GroundTruth | Mapping[str, Any]
"""A row's ``reward_model.ground_truth``, as its view or its dict."""

COMPONENTS = ("format_tags", "format_answer", "sam_iou", "box", "case", "iou_gain", "decision", "point", "sam_called")


def parse_answer(
    task: str, response: Response, config: VeteranRewardConfig, coordinates: Coordinates = Coordinates.PIXELS
) -> ParsedResponse:
    """``response`` parsed under ``task``'s tag rule (``config.reasoning(task)``) and the model's coordinate
    convention; one already parsed as it is.

    The agent loops parse once and hand the same parse to the reward and to dynamic sampling.
    """
    if isinstance(response, ParsedResponse):
        return response
    return parse_response(response, reasoning=config.reasoning(task), coordinates=coordinates)


def _breakdown(
    task: str,
    parsed: ParsedResponse,
    answer_ok: bool,
    config: VeteranRewardConfig,
    steps: Sequence[dict] = (),
    iou_gain: float = 0.0,
    sam_called: int = 0,
    generalized: bool = False,
    **summed,
) -> dict:
    """Every component (0 when not applicable), ``well_formed``, the total ``score``, the task, a failure category
    and the SAM2 ``steps`` (:mod:`recipe.task.sam_steps` records).

    ``iou_gain`` (part of ``case`` already) and ``sam_called`` are logged only; ``summed`` are the task components
    of ``formulas.turn_reward``. ``generalized``: the answer is a list of objects (any JSON parsed is an answer).
    """
    formatting = {
        "format_tags": config.format_reward * parsed.format_ok,
        "format_answer": config.format_reward * answer_ok,
    }
    score = formulas.turn_reward(config, **formatting, **summed)
    info = dict.fromkeys(COMPONENTS, 0.0) | formatting | summed | {"iou_gain": iou_gain, "sam_called": sam_called}
    info["well_formed"] = parsed.format_ok and answer_ok
    parsed_answer = parsed.has_json if generalized else parsed.answer is not None
    failure = "" if answer_ok else ("invalid_answer" if parsed_answer else "no_answer")
    components = {k: float(v) for k, v in info.items()}
    return {"score": float(score), **components, "task": task, "failure": failure, SAM_STEPS: encode_steps(steps)}


async def score_grounding(
    response: Response, truth: Truth, image: ImageRef, sam: SamClient, config: VeteranRewardConfig
) -> dict[str, Any]:
    """Box reward + ``R_SAM`` (SAM2's mask of the box against the GT) + formatting.

    ``response`` is the decoded text, or it parsed by :func:`parse_answer` (likewise for every ``score_*``).
    """
    truth = GroundTruth.of(truth)
    parsed = parse_answer(GROUNDING, response, config)
    if truth.generalized:
        return await _score_grounding_objects(parsed, truth, image, sam, config)
    box = parsed.bbox_2d()
    if not box.ok:
        return _breakdown(GROUNDING, parsed, False, config)
    prompt = Prompt(box=box.value)
    (result,) = await sam.segment(image, [prompt], ground_truth=dict(truth.mask), return_edge_iou=True)
    sam_iou = result.edge_iou if result.ok else 0.0
    return _breakdown(
        GROUNDING,
        parsed,
        True,
        config,
        steps=[step_json(prompt, result, result.edge_iou)],
        sam_iou=sam_iou,
        box=formulas.box_reward(box.value, truth.box, config),
        sam_called=1,
    )


def objects_grounding(
    boxes: Sequence[Sequence[float]], truth: GroundTruth, union_iou: float, config: VeteranRewardConfig
) -> tuple[float, float]:
    """A generalized grounding answer's box reward and ``R_SAM`` (module docstring).

    Args:
        boxes: The answered boxes (none: "none").
        truth: The row's ground truth.
        union_iou: Edge-excluded IoU of the union of SAM2's masks of ``boxes`` with the target (unused for "none").
        config: Reward knobs.
    """
    targets = truth.targets()
    if not boxes or not targets:  # "none": right exactly when there is no target
        right = float(not boxes and not targets)
        return right * (1.0 + 1.0), right  # R_IoU^B and R_L1^B of a perfect box (hard or soft), and R_SAM
    pairs = match_boxes(boxes, [target.box for target in targets])
    box = sum(formulas.box_reward(boxes[i], targets[j].box, config) for i, j in pairs)
    return box / max(len(boxes), len(targets)), union_iou


async def _score_grounding_objects(
    parsed: ParsedResponse, truth: GroundTruth, image: ImageRef, sam: SamClient, config: VeteranRewardConfig
) -> dict[str, Any]:
    """A generalized grounding row's reward (module docstring)."""
    objects = parsed.objects(max_objects=config.max_objects)
    if not objects.ok:
        return _breakdown(GROUNDING, parsed, False, config, generalized=True)
    boxes = [item.box for item in objects.value]
    if not boxes or not truth.targets():
        box, sam_iou = objects_grounding(boxes, truth, 0.0, config)
        return _breakdown(GROUNDING, parsed, True, config, sam_iou=sam_iou, box=box, generalized=True)
    prompts = [Prompt(box=item) for item in boxes]
    results = await sam.segment(image, prompts, ground_truth=dict(truth.mask), return_edge_iou=True)
    gt = decode_rle(truth.mask)
    union = np.zeros_like(gt)
    for result in results:
        if result.ok:
            union |= result.mask_array()
    box, sam_iou = objects_grounding(
        boxes, truth, edge_excluded_iou(union, gt) if all(result.ok for result in results) else 0.0, config
    )
    return _breakdown(
        GROUNDING,
        parsed,
        True,
        config,
        steps=[step_json(prompt, result, result.edge_iou) for prompt, result in zip(prompts, results, strict=True)],
        sam_iou=sam_iou,
        box=box,
        sam_called=len(prompts),
        generalized=True,
    )


def shown_logits(truth: Truth) -> np.ndarray:
    """The low-resolution logits of the mask a mask-comprehension row shows (``init_logits``).

    Raises:
        ValueError: When the row has none (prepared before data_prep stored them) or they are corrupt; the message
            says to rerun ``make data-veteran``.
    """
    stored = GroundTruth.of(truth).init_logits
    if stored is None:
        raise ValueError(
            "a mask-comprehension row has no init_logits (the SAM2 logits of the mask it shows): it was prepared by an "
            "older data_prep; rerun `make data` and `make data-veteran`"
        )
    try:
        return decode_logits(stored)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"a mask-comprehension row has corrupt init_logits ({err}); rerun `make data-veteran`"
        ) from err


async def score_mask_comprehension(
    response: Response, truth: Truth, image: ImageRef, sam: SamClient, config: VeteranRewardConfig
) -> dict[str, Any]:
    """``R_SAM`` of the refined mask + the case/action reward of Table 2 + formatting.

    The shown mask is ``init_mask``, SAM2's mask of the GT box at data preparation. A refinement is one SAM2 call:
    the same box, the clicks and that mask's stored logits (``init_logits``) as ``mask_input``, so the mask refined
    is the mask shown; the IoU gain is measured from ``init_edge_iou``, the shown mask's edge-excluded IoU.

    A row without usable stored logits (see :func:`shown_logits`) scores 0 with failure ``bad_row`` and a logged
    reason instead of stopping the step; preflight refuses whole files prepared before the logits existed.
    """
    truth = GroundTruth.of(truth)
    try:
        mask_input = shown_logits(truth)
    except ValueError as err:
        logger.warning("mask comprehension: %s", err)
        zero = dict.fromkeys(COMPONENTS, 0.0)
        return {"score": 0.0, **zero, "task": MASK_COMPREHENSION, "failure": "bad_row", SAM_STEPS: encode_steps([])}
    parsed = parse_answer(MASK_COMPREHENSION, response, config)
    clicks = parsed.clicks()
    if clicks is None:
        return _breakdown(MASK_COMPREHENSION, parsed, False, config)
    pos, neg = clicks
    before = after = float(truth.init_edge_iou)
    calls, steps = 0, []
    if pos is not None or neg is not None:
        prompt = Prompt.from_clicks(pos, neg, box=tuple(truth.box), mask_input=mask_input)
        (refined,) = await sam.segment(image, [prompt], ground_truth=dict(truth.mask), return_edge_iou=True)
        after, calls = (refined.edge_iou if refined.ok else 0.0), 1
        steps.append(step_json(prompt, refined, refined.edge_iou))
    case = formulas.refinement_case_reward(truth.good_enough, pos is not None, neg is not None, after - before, config)
    gain = formulas.iou_gain_reward(after - before, config.iou_gain)
    return _breakdown(
        MASK_COMPREHENSION,
        parsed,
        True,
        config,
        steps=steps,
        sam_iou=after,
        case=case,
        iou_gain=gain,
        sam_called=calls,
    )


def score_auxiliary(response: Response, truth: Truth, config: VeteranRewardConfig) -> dict[str, Any]:
    """Decision reward + point rewards (inside each error region, within ``tau_d`` of its centre) + formatting."""
    truth = GroundTruth.of(truth)
    parsed = parse_answer(AUXILIARY, response, config)
    clicks = parsed.clicks()
    if clicks is None:
        return _breakdown(AUXILIARY, parsed, False, config)
    pos, neg = clicks
    fp, fn = truth.false_positive, truth.false_negative
    decision = config.decision_weight * formulas.auxiliary_decision_reward(
        pos is not None, neg is not None, fn is not None, fp is not None
    )
    point = sum(
        formulas.point_reward(click, decode_rle(region.mask), region.center, config.point_radius)
        for click, region in ((pos, fn), (neg, fp))
        if click is not None and region is not None
    )
    # No SAM2 call: the record keeps the clicks the point rewards scored, for the gallery.
    answered = Prompt.from_clicks(pos, neg)
    steps = [step_json(answered, None)] if answered.points else []
    return _breakdown(AUXILIARY, parsed, True, config, steps=steps, decision=decision, point=point)


def _step_records(step: Step) -> list[dict[str, Any]]:
    """A workflow turn's SAM2 records: its one call (or none), or one per object it segmented."""
    if len(step.prompts) > 1:
        return [step_json(p, r, r.edge_iou) for p, r in zip(step.prompts, step.results, strict=False)]
    return [step_json(step.prompt, step.result, None if step.result is None else step.result.edge_iou)]


def score_workflow(steps: list, truth: Truth, termination: str, config: VeteranRewardConfig) -> dict[str, Any]:
    """An on-policy workflow episode: the mean over its turns of each turn's task reward (our choice; the paper
    trains the single-turn tasks). Grounding turns score format + box + ``R_SAM``; refinement turns score format
    + ``R_SAM`` of the refined mask + Table 2, the mask they were shown being Good Enough when its edge-excluded IoU
    is 1.

    Args:
        steps: The episode's :class:`recipe.task.episodes.Step` records.
        truth: The row's ground truth (``box`` at least).
        termination: The episode's termination reason.
        config: Reward knobs.
    """
    truth = GroundTruth.of(truth)
    turns, before, well_formed = [], 0.0, bool(steps)
    for step in steps:
        tags = config.format_reward * step.parsed.format_ok
        well_formed &= step.parsed.format_ok
        if step.kind == "grounding":
            if truth.generalized:
                answered = step.parsed.objects(max_objects=config.max_objects)
                boxes = None if not answered.ok else [item.box for item in answered.value]
            else:
                box = step.parsed.bbox_2d()
                boxes = [box.value] if box.ok else None
            well_formed &= boxes is not None
            if boxes is None:
                turns.append(formulas.turn_reward(config, format_tags=tags, format_answer=0.0))
                continue
            before = step.result.edge_iou if step.result is not None and step.result.ok else 0.0
            if truth.generalized:
                box_part, before = objects_grounding(boxes, truth, before, config)
            else:
                box_part = formulas.box_reward(boxes[0], truth.box, config)
            turns.append(
                formulas.turn_reward(
                    config, format_tags=tags, format_answer=config.format_reward, box=box_part, sam_iou=before
                )
            )
            continue
        clicks = step.parsed.clicks()
        well_formed &= clicks is not None
        if clicks is None:
            turns.append(formulas.turn_reward(config, format_tags=tags, format_answer=0.0))
            continue
        pos, neg = clicks
        after = before if step.result is None else (step.result.edge_iou if step.result.ok else 0.0)
        case = formulas.refinement_case_reward(
            is_good_enough(before), pos is not None, neg is not None, after - before, config
        )
        turns.append(
            formulas.turn_reward(config, format_tags=tags, format_answer=config.format_reward, sam_iou=after, case=case)
        )
        before = after
    return {
        "score": float(sum(turns) / len(turns)) if turns else 0.0,
        "turns": float(len(turns)),
        "final_edge_iou": float(before),
        "stopped": float(termination == "stop"),
        "well_formed": float(well_formed),  # every turn kept both format rules
        "task": WORKFLOW,
        "failure": "" if termination in ("stop", "max_steps", NO_TARGET) else termination,
        SAM_STEPS: encode_steps(record for step in steps for record in _step_records(step)),
    }
