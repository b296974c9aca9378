"""Per-sample records: what the model answered, what SAM2 was asked and returned, and the IoU at every step.

Records are JSON lines appended per batch (flushed and fsynced) under ``<output_dir>/records/``, one file per
worker. They are the run's state: a restarted run skips every sample that has a record, and a line torn by a kill
is dropped (and its sample evaluated again), so no sample is lost or counted twice. Intersections and unions are
counted under the run's metrics convention, which is part of the run's fingerprint, so records never mix them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recipe.evaluate.samples import BadSample, EvalSample
from recipe.task.episodes import NO_TARGET, Step
from recipe.task.metrics import SegMetrics
from recipe.task.sam_steps import prompt_json
from reward_server.masks import box_iou

logger = logging.getLogger(__name__)

RECORDS_DIR = "records"


def prompt_record(step: Step) -> dict[str, Any] | None:
    """The step's SAM2 prompt as JSON (``box``, ``points``, ``labels`` in the SAM2 image's pixels), or None (none
    sent, or several: :func:`object_records`)."""
    return prompt_json(step.prompt)


def object_records(step: Step) -> list[dict[str, Any]] | None:
    """A step that sent several prompts (a generalized answer's objects): each prompt with its mask (COCO RLE, None
    when it failed); None for a step of one prompt or none."""
    if len(step.prompts) < 2:
        return None
    return [
        {"prompt": prompt_json(prompt), "mask": result.mask if result.ok else None}
        for prompt, result in zip(step.prompts, step.results, strict=False)
    ]


def step_record(step: Step, labels: np.ndarray, metrics: SegMetrics) -> dict[str, Any]:
    """One turn: the raw answer, its parsed JSON (model space), the SAM2 prompt (original pixels) and the scored mask.

    ``intersection``, ``union`` and ``iou`` (None where the convention does not score the mask) are present when the
    turn produced a mask.
    """
    record: dict[str, Any] = {
        "kind": step.kind,
        "response": step.response,
        "answer": step.parsed.json_value if step.parsed.has_json else None,
        "answer_error": step.parsed.answer_error,
        "format_ok": step.parsed.format_ok,
        "prompt": prompt_record(step),
    }
    objects = object_records(step)
    if objects is not None:
        record["objects"] = objects
    result = step.result
    if result is None:
        return record
    if not result.ok:
        record["sam_error"] = f"{result.code}: {result.error}"
        return record
    scored = metrics.score(result.mask_array(), labels)
    record.update(
        mask=result.mask,
        sam_score=result.score,
        intersection=scored.intersection,
        union=scored.union,
        iou=scored.iou,
    )
    return record


def mask_overlap(steps: Sequence[dict[str, Any]], gt_area: int, last: int | None = None) -> tuple[int, int, bool]:
    """(I, U, whether there is a mask) of the mask in effect after step ``last`` (default: the last step).

    That is the latest mask SAM2 produced up to it; before any (or when every call failed) the prediction is empty:
    I = 0, U = |GT|.
    """
    for step in reversed(steps[: None if last is None else last + 1]):
        if "intersection" in step:
            return step["intersection"], step["union"], True
    return 0, gt_area, False


def first_box_iou(steps: Sequence[dict[str, Any]], gt_box: Sequence[float] | None) -> float | None:
    """IoU of the first step's box (the grounding box SAM2 was sent) with the GT box; 0.0 when the first answer gave
    none (a miss); None without a GT box."""
    if gt_box is None:
        return None
    prompt = steps[0]["prompt"] if steps else None
    if prompt is None or prompt["box"] is None:
        return 0.0
    return float(box_iou(prompt["box"], gt_box)[0, 0])


def said_none(episode: Any) -> bool | None:
    """A list answer's decision: True for "none", False for objects, None when no valid list was given."""
    if episode.termination == NO_TARGET:
        return True
    return False if any(step.prompts for step in episode.steps) else None


def sample_record(
    sample: EvalSample, episode: Any, mode: str, metrics: SegMetrics, timing: dict[str, float]
) -> dict[str, Any]:
    """The record of one evaluated sample; its prediction is the last mask SAM2 produced (none: failed, unless the
    answer was a valid "none": an empty prediction).

    ``gt_area`` is the target's area under the metrics' convention (the union of a failed answer); ``box_iou`` is
    :func:`first_box_iou` against the GT box (the target's tight box at the original resolution). A generalized
    row's record adds ``no_target`` (its target is empty) and ``said_none`` (:func:`said_none`), gRefCOCO's metrics'
    inputs (``recipe.task.metrics.GeneralizedMetrics``).
    """
    steps = [step_record(step, sample.labels, metrics) for step in episode.steps]
    gt_area = metrics.target_area(sample.labels)
    intersection, union, has_mask = mask_overlap(steps, gt_area)
    has_mask = has_mask or episode.termination == NO_TARGET  # "none" predicts an empty mask
    generalized = {}
    if sample.generalized:
        generalized = {"no_target": not sample.object_boxes, "said_none": said_none(episode)}
    return {
        **generalized,
        "uid": sample.uid,
        "dataset": sample.dataset,
        "question": sample.question,
        "mode": mode,
        "image_hw": list(sample.image.shape[:2]),
        "gt_area": gt_area,
        "steps": steps,
        "termination": episode.termination,
        "failed": not has_mask,
        "intersection": intersection,
        "union": union,
        "iou": metrics.sample_iou(intersection, union, failed=not has_mask).iou,
        "gt_box": sample.gt_box,
        "box_iou": first_box_iou(steps, sample.gt_box),
        "timing": timing,
    }


def bad_sample_record(sample: BadSample, mode: str) -> dict[str, Any]:
    """A row that could not be evaluated: kept, with its reason, out of the metrics and named in the summary."""
    return {"uid": sample.uid, "dataset": sample.dataset, "mode": mode, "skipped": sample.error}


class RecordWriter:
    """Appends records to one JSON-lines file, durably per batch.

    Opening drops a torn last line left by a killed run, so the next record starts on a line of its own.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.path)
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self._handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _drop_torn_tail(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a torn last record (%d bytes) from an interrupted run", path, len(data) - keep)
        with open(path, "r+b") as handle:
            handle.truncate(keep)


def read_records(output_dir: str | Path, uids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every complete record under ``<output_dir>/records`` by sample id (the first one, should a sample repeat).

    Args:
        output_dir: The run's directory.
        uids: Keep only these samples (the run's current data selection).
    """
    wanted = None if uids is None else set(uids)
    records: dict[str, dict[str, Any]] = {}
    for path in sorted((Path(output_dir) / RECORDS_DIR).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line: that sample is evaluated again
            uid = record.get("uid")
            if uid is None or (wanted is not None and uid not in wanted):
                continue
            if uid in records:
                logger.warning("sample %s has more than one record; keeping the first", uid)
                continue
            records[uid] = record
    return records
