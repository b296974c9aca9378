"""SAM-R1's reward (section 3.3): tiered SAM IoU + reasoning format + segmentation format.

The answer's box and point (a positive click) go to the SAM2 pool; the IoU of its mask with the ground truth at
840x840 sets the tiered reward, eq. (5). The three rewards are independent: the label only decides the segmentation
format, so an answer with a valid box and point but no valid label still earns its tier. Without a valid box and
point, SAM2 is not called and the tier is 0.
A generalized row (several objects or none, ``ground_truth.objects``) asks for a list of such answers. Each
answered object is matched one to one to a ground-truth object by box IoU (:mod:`recipe.task.matching`), SAM2
segments each matched object from its box and point, and the tiered rewards of the matched objects' mask IoUs are
summed and divided by the larger of the two counts, so a missed object and an extra one cost alike. A correct "none"
(``[]`` for no target) earns the top tier; any box for an absent object earns nothing.
Used through verl's reward loop as ``reward.custom_reward_function`` with the ``sam_image`` reward manager.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from recipe.task.answer import MAX_OBJECTS, ParsedResponse, parse_response
from recipe.task.coordinates import Coordinates, model_coordinates
from recipe.task.dataset_rows import GroundTruth, reward_image
from recipe.task.matching import match_boxes
from recipe.task.prompts import checkpoint_opening
from recipe.task.sam_steps import encode_steps, step_json
from recipe.verl_runtime.sam_client import get_sam_client
from reward_server.client import SamClient
from reward_server.protocol import Prompt

logger = logging.getLogger(__name__)

PAPER_TIERS: tuple[tuple[float, float], ...] = ((0.8, 4.0), (0.7, 3.0), (0.5, 2.0))
"""Eq. (5): (IoU strictly above, reward), checked in order; 0 below the last."""


def tiered_iou_reward(iou: float, tiers: Sequence[Sequence[float]] = PAPER_TIERS) -> float:
    """Eq. (5) by default; a single tier ``[(t, 4)]`` is the fixed-threshold ablation of Table 3."""
    for threshold, reward in tiers:
        if iou > threshold:
            return float(reward)
    return 0.0


@dataclass(frozen=True)
class RewardBreakdown:
    """Every component, with the same keys for every sample (verl logs them as ``reward_extra_info``)."""

    tiered: float = 0.0
    reasoning_format: float = 0.0
    segmentation_format: float = 0.0
    iou: float = 0.0
    sam_called: int = 0
    well_formed: float = 0.0  # 1 when both format rules hold: the share a learning run must raise first
    failure: str = ""  # category: no_answer, bbox, point, label, objects, no_image, sam_<code>; "" when nothing lost
    failure_detail: str = ""
    sam_steps: str = "[]"  # the SAM2 call as recipe.task.sam_steps records it, for the training gallery

    def as_dict(self) -> dict[str, Any]:
        score = self.tiered + self.reasoning_format + self.segmentation_format
        return {"score": score, **self.__dict__}


def _segmentation_failure(parsed: ParsedResponse) -> tuple[str, str]:
    """The first field that breaks the segmentation format (category and reason), or ``("", "")``."""
    if parsed.answer is None:
        return "no_answer", parsed.answer_error or ""
    for name, field in (("bbox", parsed.bbox_2d()), ("point", parsed.point_2d()), ("label", parsed.label())):
        if not field.ok:
            return name, field.error or ""
    return "", ""


def _top_tier(tiers: Sequence[Sequence[float]]) -> float:
    return max((float(reward) for _, reward in tiers), default=0.0)


async def _score_objects(
    parsed: ParsedResponse,
    truth: GroundTruth,
    scored: RewardBreakdown,
    extra_info: Mapping[str, Any] | None,
    sam: Callable[[], SamClient],
    *,
    tiers: Sequence[Sequence[float]],
    format_reward: float,
    format_penalty: float,
    max_objects: int,
) -> RewardBreakdown:
    """A generalized row's tiered reward and segmentation format (module docstring); ``scored`` holds the
    reasoning format and ``sam`` gives the SAM2 client. ``iou`` is the matched objects' mask IoUs summed over the
    larger count (1 for a correct "none")."""
    objects = parsed.objects(with_point=True, with_label=True, max_objects=max_objects)
    if not objects.ok:
        category = "objects" if parsed.has_json else "no_answer"
        return replace(
            scored,
            segmentation_format=format_penalty,
            failure=category,
            failure_detail=(objects.error or "")[:200],
        )
    scored = replace(scored, segmentation_format=format_reward, well_formed=float(parsed.format_ok))
    answered, targets = objects.value, truth.targets()
    if not answered or not targets:  # "none": right exactly when there is no target
        right = not answered and not targets
        return replace(scored, tiered=_top_tier(tiers) if right else 0.0, iou=float(right))
    image = reward_image(extra_info)
    if image is None:
        return replace(scored, failure="no_image", failure_detail="no image")
    pairs = match_boxes([item.box for item in answered], [target.box for target in targets])
    prompts = [Prompt(box=answered[i].box, points=(answered[i].point,), labels=(1,)) for i, _ in pairs]
    client = sam()
    calls = [
        client.segment(image, [prompt], ground_truth=dict(targets[j].mask))
        for prompt, (_, j) in zip(prompts, pairs, strict=True)
    ]
    results = await asyncio.gather(*calls)
    results = [result for (result,) in results]
    steps = [step_json(prompt, result, result.iou) for prompt, result in zip(prompts, results, strict=True)]
    scored = replace(scored, sam_called=len(prompts), sam_steps=encode_steps(steps))
    failed = next((result for result in results if not result.ok), None)
    if failed is not None:
        logger.warning("SAM2 answered %s: %s", failed.code, failed.error)
        scored = replace(scored, failure=f"sam_{failed.code}", failure_detail=str(failed.error)[:200])
    ious = [float(result.iou) if result.ok else 0.0 for result in results]
    count = max(len(answered), len(targets))
    tiered = sum(tiered_iou_reward(iou, tiers) for iou in ious) / count
    return replace(scored, tiered=tiered, iou=sum(ious) / count)


async def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Mapping[str, Any],
    extra_info: Mapping[str, Any] | None = None,
    reward_server: Mapping[str, Any] | None = None,
    tiers: Sequence[Sequence[float]] = PAPER_TIERS,
    format_reward: float = 1.0,
    format_penalty: float = -1.0,
    model_path: str | None = None,
    sam_client: SamClient | None = None,
    max_objects: int = MAX_OBJECTS,
    **_: Any,
) -> dict[str, Any]:
    """The reward of one response, in verl's reward-loop contract (keywords from ``reward_kwargs``).

    Args:
        data_source: The row's data source (unused: one rule for every source).
        solution_str: The decoded response.
        ground_truth: The row's ground truth: ``mask`` (COCO RLE at 840) at least.
        extra_info: The row's extra info; ``image`` holds the model's image (the ``sam_image`` manager adds it).
        reward_server: The ``reward_server`` config naming the SAM2 pool (not needed when ``sam_client`` is given).
        tiers: (IoU threshold, reward) pairs of the tiered reward.
        format_reward: Reward of a satisfied format rule.
        format_penalty: Reward of a violated format rule.
        model_path: The policy's checkpoint: the answer follows its coordinate convention
            (:func:`recipe.task.coordinates.model_coordinates`) and continues its chat template's opening of the
            turn (:func:`recipe.task.prompts.checkpoint_opening`); None reads pixels and no opening.
        sam_client: A client to use instead of the process's pool client (tests).
        max_objects: How many objects a generalized answer may list.

    Returns:
        ``score`` and every component; never raises for bad model output. ``failure`` names what cost reward: a
        SAM2 error, a missing image, or else the first field that broke the segmentation format.
    """
    coordinates, opening = Coordinates.PIXELS, ""
    if model_path is not None:
        coordinates, opening = model_coordinates(model_path), checkpoint_opening(model_path)
    parsed = parse_response(
        opening + solution_str if isinstance(solution_str, str) else solution_str, coordinates=coordinates
    )
    reasoning = format_reward if parsed.format_ok else format_penalty
    truth = GroundTruth.of(ground_truth)

    def sam() -> SamClient:  # connected only when SAM2 is called
        return sam_client or get_sam_client(reward_server or {})

    if truth.generalized:
        scored = await _score_objects(
            parsed,
            truth,
            RewardBreakdown(reasoning_format=reasoning),
            extra_info,
            sam,
            tiers=tiers,
            format_reward=format_reward,
            format_penalty=format_penalty,
            max_objects=max_objects,
        )
        return scored.as_dict()
    failure, detail = _segmentation_failure(parsed)
    scored = RewardBreakdown(
        reasoning_format=reasoning,
        segmentation_format=format_penalty if failure else format_reward,
        well_formed=float(parsed.format_ok and not failure),
        failure=failure,
        failure_detail=detail[:200],
    )
    box, point = parsed.bbox_2d(), parsed.point_2d()
    if not (box.ok and point.ok):  # SAM2 needs both; the label is not a SAM2 prompt
        return scored.as_dict()
    image = reward_image(extra_info)
    if image is None:
        return replace(scored, failure="no_image", failure_detail="no image").as_dict()
    prompt = Prompt(box=box.value, points=(point.value,), labels=(1,))
    (result,) = await sam().segment(image, [prompt], ground_truth=dict(truth.mask))
    scored = replace(scored, sam_steps=encode_steps([step_json(prompt, result, result.iou)]))
    if not result.ok:
        logger.warning("SAM2 answered %s: %s", result.code, result.error)
        return replace(
            scored, sam_called=1, failure=f"sam_{result.code}", failure_detail=str(result.error)[:200]
        ).as_dict()
    return replace(scored, tiered=tiered_iou_reward(result.iou, tiers), iou=float(result.iou), sam_called=1).as_dict()
