"""Evaluation samples read from data_prep's parquet rows, streamed so a 10k-sample set never sits in memory.

A sample is identified by ``<file stem>:<row position>``, which is stable across runs and worker counts, so a
resumed or re-sharded run knows which samples are finished.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from recipe.task.dataset_rows import Row
from recipe.task.labels import label_mask
from reward_server.images import to_rgb
from reward_server.masks import MODEL_SIZE, mask_to_box, model_to_original

COLUMNS = [Row.data_source.name, Row.images.name, Row.reward_model.name, Row.extra_info.name, Row.orig_image.name]
READ_BATCH_ROWS = 64


@dataclass
class EvalSample:
    """One question with the 840x840 image the model sees, the original image SAM2 segments and its labels.

    Attributes:
        uid: ``<file stem>:<row position>``.
        dataset: The row's ``data_source`` (e.g. ``reasonseg_val``, ``refcocog_test``), the table column.
        question: The referring expression or question.
        model_image: RGB ``(840, 840, 3)``: the row's image, exactly as in training.
        image: RGB original image.
        labels: uint8 ``(H, W)`` ground truth at the original resolution: 0, 1, or 255 for ignored pixels.
        object_boxes: A generalized row's objects' boxes at the original resolution (none: no target), or None.
    """

    uid: str
    dataset: str
    question: str
    model_image: np.ndarray
    image: np.ndarray
    labels: np.ndarray
    object_boxes: list[list[float]] | None = None

    @property
    def generalized(self) -> bool:
        """Whether the row lists its objects (several, one or none)."""
        return self.object_boxes is not None

    @cached_property
    def gt_box(self) -> list[float] | None:
        """Tight xyxy box of the target at the original resolution (the ``oracle_box`` prompt); None for a
        generalized row, whose boxes are :attr:`object_boxes` (box accuracy is a one-object measure)."""
        return None if self.generalized else mask_to_box(self.labels == 1)


@dataclass(frozen=True)
class BadSample:
    """A row that cannot be evaluated (missing or corrupt image or ground truth), kept with its reason."""

    uid: str
    dataset: str
    error: str


def sample_uid(path: str | Path, position: int) -> str:
    return f"{Path(path).stem}:{position}"


def load_sample(uid: str, data: dict[str, Any]) -> EvalSample | BadSample:
    """One row as a sample, or the reason it cannot be one; never raises for bad data."""
    row = Row(data)
    dataset = str(row.data_source or "unknown")
    try:
        if not row.orig_image:
            raise ValueError("the row has no orig_image: build evaluation sets with data_prep's val/test splits")
        image = to_rgb(row.orig_image)
        model_image = to_rgb(row.image_bytes)
        if model_image.shape[:2] != (MODEL_SIZE, MODEL_SIZE):
            raise ValueError(f"the model image is {model_image.shape[:2]}, not {MODEL_SIZE}x{MODEL_SIZE}")
        labels = label_mask(row.ground_truth, original=True)
        if labels.shape != image.shape[:2]:
            raise ValueError(f"ground truth is {labels.shape}, original image is {image.shape[:2]}")
        question = None if row.extra_info is None else row.extra_info.question
        if not isinstance(question, str) or not question.strip():
            raise ValueError("empty question")
        objects = row.ground_truth.objects
        boxes = None
        if objects is not None:
            boxes = [[float(v) for v in model_to_original(target.box, image.shape[:2])] for target in objects]
    except (ValueError, TypeError, KeyError, IndexError) as err:
        return BadSample(uid, dataset, f"{type(err).__name__}: {err}")
    return EvalSample(uid, dataset, question, model_image, image, labels, boxes)


def iter_samples(
    files: Sequence[str | Path], keep: Any = None, limit: int | None = None
) -> Iterator[EvalSample | BadSample]:
    """Streams the rows of ``files`` in order as samples.

    Args:
        files: data_prep evaluation parquet files.
        keep: ``keep(uid) -> bool`` selects rows before they are decoded (a worker's shard, unfinished samples).
        limit: Only the first ``limit`` rows of each file.
    """
    for path in files:
        position = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS, columns=COLUMNS):
            for row in batch.to_pylist():
                if limit is not None and position >= limit:
                    break
                uid = sample_uid(path, position)
                position += 1
                if keep is None or keep(uid):
                    yield load_sample(uid, row)
            if limit is not None and position >= limit:
                break


def all_uids(files: Sequence[str | Path], limit: int | None = None) -> list[str]:
    """Every sample id of ``files`` in order (cheap: reads row counts only)."""
    uids = []
    for path in files:
        rows = pq.ParquetFile(path).metadata.num_rows
        uids += [sample_uid(path, position) for position in range(min(rows, limit) if limit is not None else rows)]
    return uids
