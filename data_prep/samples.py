"""One referring expression (or reasoning question) on one object, as read from a source dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SourceSample:
    """Everything needed to build a row, small and picklable for worker processes.

    Attributes:
        key: Unique id within the dataset, e.g. ``refcocog/train/ref9001/sent3``.
        dataset: ``refcoco``, ``refcoco+``, ``refcocog`` or ``reasonseg``.
        split: The source split.
        question: The referring expression or question.
        image_path: The original image file.
        coco_segmentation: COCO segmentation (polygons or RLE) of the target, for refer datasets.
        coco_hw: ``(H, W)`` that ``instances.json`` gives for the image.
        lisa_shapes: LISA polygon shapes (``label``, ``points``), for ReasonSeg.
        objects: A generalized sample's objects (gRefCOCO: each one's COCO segmentation; empty: no target), or None
            for a sample of one target. Its row lists them (``ground_truth.objects``) and asks for a list.
        ids: Source ids by their ``extra_info`` field (``recipe.task.dataset_rows.SOURCE_IDS``), None where a
            dataset has none.
    """

    key: str
    dataset: str
    split: str
    question: str
    image_path: str
    coco_segmentation: Any = None
    coco_hw: tuple[int, int] | None = None
    lisa_shapes: tuple[dict[str, Any], ...] | None = None
    objects: tuple[Any, ...] | None = None
    ids: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Skipped:
    """A sample (or a whole source) left out, with the reason."""

    key: str
    reason: str
