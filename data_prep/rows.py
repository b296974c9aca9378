"""Source samples to verl ``RLHFDataset`` rows: the 840x840 image the model sees, ground truths at 840 and at the
original resolution, the prompt of the chosen recipe."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep.render import render_label_mask, render_objects
from data_prep.samples import Skipped, SourceSample
from recipe.task.dataset_rows import (
    ABILITY,
    GROUNDING,
    IGNORE_LABEL,
    REWARD_STYLE,
    SAMR1,
    SOURCE_IDS,
    TASK_AGENTS,
    ExtraInfo,
    GroundTruth,
    RewardModel,
    Row,
    Target,
    image_entry,
)
from recipe.task.prompts import build_messages
from reward_server.images import model_image_jpeg
from reward_server.masks import MODEL_SIZE, encode_rle, mask_to_box, original_to_model, resize_mask

# The task of each recipe's rows (SAM-Veteran's other tasks are derived from its grounding rows); the agent loop is
# the task's. verl falls back to its default loop only when the agent_name column is absent, and every row has it.
RECIPE_TASKS = {"samr1": SAMR1, "veteran": GROUNDING}
LabelRenderer = Callable[[SourceSample, int, int], np.ndarray]
ObjectRenderer = Callable[[SourceSample, int, int], tuple[list[np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class RowOptions:
    """How rows are built.

    Attributes:
        recipe: The recipe whose prompt and task the rows get.
        keep_original_image: Store the original image file (evaluation rows).
        keep_empty_targets: Keep samples whose target is empty (no target polygon, all ignored) or vanishes at 840:
            evaluation scores at the original resolution and LISA scores these too; training rows skip them.
    """

    recipe: str = "samr1"
    keep_original_image: bool = False
    keep_empty_targets: bool = False


def _rle_or_none(mask: np.ndarray) -> dict[str, Any] | None:
    return encode_rle(mask) if mask.any() else None


def _objects_at_840(masks: list[np.ndarray], hw: tuple[int, int], training: bool) -> list[Target] | Skipped:
    """Each object's mask and box at 840, or why a training row cannot keep the sample (an object vanishing at 840
    would be counted but could never be found; evaluation scores at the original resolution and keeps it)."""
    objects = []
    for number, mask in enumerate(masks, 1):
        mask_840 = resize_mask(mask, (MODEL_SIZE, MODEL_SIZE))
        if training and not mask_840.any():
            return Skipped("", f"object {number} vanishes when the {hw[0]}x{hw[1]} image is resized to {MODEL_SIZE}")
        box = [float(v) for v in original_to_model(mask_to_box(mask), hw)]
        objects.append(Target.build(mask=encode_rle(mask_840), box=box))
    return objects


def build_row(
    sample: SourceSample,
    index: int,
    options: RowOptions,
    render: LabelRenderer = render_label_mask,
    objects_renderer: ObjectRenderer = render_objects,
) -> dict[str, Any] | Skipped:
    """One parquet row, or the reason the sample is skipped (missing or unreadable image, bad annotation, and for
    training rows an empty target). Never raises for bad data.

    A generalized sample (``sample.objects`` not None) becomes a generalized row: its objects at 840 in
    ``ground_truth.objects``, their union as the target, the prompt asking for a list; its target may be empty, in
    training rows too.

    Args:
        sample: The source sample.
        index: The row's ``extra_info.index``.
        options: How rows are built.
        render: The sample's label mask (0, 1, IGNORE_LABEL) at the image's ``(height, width)``; raises ValueError,
            TypeError or KeyError for a bad annotation. Custom data (:mod:`data_prep.custom`) brings its own.
        objects_renderer: A generalized sample's object masks and label mask (the same errors as ``render``).
    """
    try:
        raw = Path(sample.image_path).read_bytes()
        with Image.open(io.BytesIO(raw)) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        return Skipped(sample.key, f"unreadable image {sample.image_path}: {type(err).__name__}: {err}")
    width, height = image.size
    if sample.coco_hw is not None and sample.coco_hw != (height, width):
        return Skipped(
            sample.key, f"image is {height}x{width}, annotation says {sample.coco_hw[0]}x{sample.coco_hw[1]}"
        )
    generalized = sample.objects is not None
    try:
        if generalized:
            masks, labels = objects_renderer(sample, height, width)
        else:
            labels = render(sample, height, width)
    except (ValueError, TypeError, KeyError) as err:
        return Skipped(sample.key, f"corrupt annotation: {err}")
    target, ignored = labels == 1, labels == IGNORE_LABEL
    keep_empty = options.keep_empty_targets or generalized  # "none" is a generalized row's answer to learn
    if not target.any() and not keep_empty:
        return Skipped(sample.key, "zero-area target")
    labels_840 = resize_mask(labels, (MODEL_SIZE, MODEL_SIZE))
    target_840 = labels_840 == 1
    if target.any() and not target_840.any() and not options.keep_empty_targets:
        return Skipped(sample.key, f"target vanishes when the {height}x{width} image is resized to {MODEL_SIZE}")
    objects = None
    if generalized:
        objects = _objects_at_840(masks, (height, width), training=not options.keep_empty_targets)
        if isinstance(objects, Skipped):
            return Skipped(sample.key, objects.reason)
    box = mask_to_box(target)
    task = RECIPE_TASKS[options.recipe]
    ground_truth = GroundTruth.build(
        mask=encode_rle(target_840),
        ignore=_rle_or_none(labels_840 == IGNORE_LABEL),
        box=None if box is None else [float(v) for v in original_to_model(box, (height, width))],
        orig_size=[height, width],
        orig_mask=encode_rle(target),
        orig_ignore=_rle_or_none(ignored),
        objects=objects,
    )
    extra_info = ExtraInfo.build(
        index=index,
        split=sample.split,
        question=sample.question,
        dataset=sample.dataset,
        task=task,
        key=sample.key,
        **{name: sample.ids.get(name) for name in SOURCE_IDS},
    )
    return Row.build(
        data_source=f"{sample.dataset}_{sample.split}",
        prompt=build_messages(task, sample.question, objects=generalized),
        images=[image_entry(model_image_jpeg(image))],
        ability=ABILITY,
        reward_model=RewardModel.build(style=REWARD_STYLE, ground_truth=ground_truth),
        extra_info=extra_info,
        agent_name=TASK_AGENTS[task],
        orig_image=raw if options.keep_original_image else None,
    ).to_dict()
