"""From per-sample records to the papers' numbers: gIoU/cIoU per dataset, per-step curves and time per sample.

Metrics are accumulated with :class:`recipe.common.metrics.SegMetrics` from the intersections and unions stored in
the records, so a summary can be recomputed at any time from the records alone (e.g. of a run still going).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from recipe.common.metrics import SegMetrics
from recipe.evaluate.records import mask_overlap

DATASET_LABELS = {
    "reasonseg_val": "ReasonSeg val",
    "reasonseg_test": "ReasonSeg test",
    "refcoco_testA": "RefCOCO testA",
    "refcoco+_testA": "RefCOCO+ testA",
    "refcocog_test": "RefCOCOg test",
}
"""The papers' column order (SAM-Veteran Table 3, SAM-R1 Tables 1 and 2); other datasets follow by name."""


def dataset_order(names: Iterable[str]) -> list[str]:
    known = [name for name in DATASET_LABELS if name in names]
    return known + sorted(set(names) - set(known))


def dataset_metrics(records: Iterable[dict[str, Any]], seg_zero_compatible: bool = False) -> dict[str, SegMetrics]:
    """One accumulator per dataset over the scored records (skipped rows are left out)."""
    metrics: dict[str, SegMetrics] = defaultdict(lambda: SegMetrics(seg_zero_compatible))
    for record in records:
        if "skipped" in record:
            continue
        accumulator = metrics[record["dataset"]]
        accumulator.add(accumulator.sample_iou(record["intersection"], record["union"]), failed=record["failed"])
    return dict(metrics)


def _stopped_at(record: dict[str, Any]) -> int | None:
    """The refinement step at which the model answered (null, null), or None."""
    return len(record["steps"]) - 1 if record["termination"] == "stop" else None


def step_curves(
    records: Sequence[dict[str, Any]], max_steps: int, seg_zero_compatible: bool = False
) -> list[dict[str, float]]:
    """SAM-Veteran's Figure 3: IoU after each refinement step and the share of samples the model has stopped.

    Step 0 is the grounding box's mask. A sample that stopped (or ended) earlier keeps its last mask.
    """
    scored = [record for record in records if "skipped" not in record]
    curve = []
    for step in range(max_steps + 1):
        metrics = SegMetrics(seg_zero_compatible)
        for record in scored:
            intersection, union, _ = mask_overlap(record["steps"], record["gt_area"], step)
            metrics.add(metrics.sample_iou(intersection, union))
        stopped = sum(1 for r in scored if (at := _stopped_at(r)) is not None and at <= step)
        summary = metrics.summary()
        curve.append(
            {
                "step": step,
                "gIoU": summary["gIoU"],
                "cIoU": summary["cIoU"],
                "terminated": stopped / len(scored) if scored else math.nan,
            }
        )
    return curve


def summarize(
    records: Sequence[dict[str, Any]],
    method: str,
    mode: str,
    max_steps: int | None = None,
    seg_zero_compatible: bool = False,
) -> dict[str, Any]:
    """Everything the table and the report need: metrics per dataset and overall, curves, turns and timing.

    Args:
        records: The run's records.
        method: The method's name in the table.
        mode: The evaluation mode.
        max_steps: Refinement steps of an iterative mode (curves are computed when given).
        seg_zero_compatible: The empty-union convention.
    """
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_dataset[record["dataset"]].append(record)
    metrics = dataset_metrics(records, seg_zero_compatible)
    datasets = {}
    for name in dataset_order(by_dataset):
        accumulator = metrics.get(name, SegMetrics(seg_zero_compatible))
        scored = [r for r in by_dataset[name] if "skipped" not in r]
        datasets[name] = {
            **accumulator.summary(),
            "n_skipped": len(by_dataset[name]) - len(scored),
            "turns_per_sample": _mean(len(r["steps"]) for r in scored),
        }
        if max_steps is not None:
            datasets[name]["steps"] = step_curves(scored, max_steps, seg_zero_compatible)
    scored = [r for r in records if "skipped" not in r]
    timing = {key: _mean(r["timing"][key] for r in scored) for key in ("total_s", "generate_s", "sam_s")}
    return {
        "method": method,
        "mode": mode,
        "convention": "seg-zero" if seg_zero_compatible else "lisa",
        "datasets": datasets,
        "n": len(scored),
        "n_skipped": len(records) - len(scored),
        "s_per_sample": timing["total_s"],
        "generate_s_per_sample": timing["generate_s"],
        "sam_s_per_sample": timing["sam_s"],
    }


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values) if values else math.nan


def _percent(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    """The papers' layout: one row per method, gIoU and cIoU (%) per dataset, then seconds per sample."""
    names = dataset_order({name for summary in summaries for name in summary["datasets"]})
    header = ["Method"] + [f"{DATASET_LABELS.get(n, n)} {metric}" for n in names for metric in ("gIoU", "cIoU")]
    header += ["s/sample", "SAM2 s/sample"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for summary in summaries:
        cells = [summary["method"]]
        for name in names:
            entry = summary["datasets"].get(name)
            cells += [_percent(entry["gIoU"]), _percent(entry["cIoU"])] if entry else ["—", "—"]
        cells += [f"{summary['s_per_sample']:.3f}", f"{summary['sam_s_per_sample']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for summary in summaries:
        counts = ", ".join(
            f"{DATASET_LABELS.get(name, name)}: n={entry['n']}, failed={entry['n_failed']}"
            + (f", skipped={entry['n_skipped']}" if entry["n_skipped"] else "")
            for name, entry in summary["datasets"].items()
        )
        notes.append(f"- {summary['method']} ({summary['convention']} convention): {counts}")
    return "\n".join([*lines, "", *notes]) + "\n"


def steps_table(summary: dict[str, Any]) -> str:
    """SAM-Veteran's Figure 3 as a table: IoU (and its change since step 0) and termination ratio per step."""
    lines = ["| Dataset | Step | gIoU | cIoU | ΔgIoU | ΔcIoU | Terminated |", "|---|---|---|---|---|---|---|"]
    for name, entry in summary["datasets"].items():
        curve = entry.get("steps", [])
        for point in curve:
            delta_g, delta_c = point["gIoU"] - curve[0]["gIoU"], point["cIoU"] - curve[0]["cIoU"]
            lines.append(
                f"| {DATASET_LABELS.get(name, name)} | {point['step']} | {_percent(point['gIoU'])} | "
                f"{_percent(point['cIoU'])} | {100 * delta_g:+.1f} | {100 * delta_c:+.1f} | "
                f"{_percent(point['terminated'])}% |"
            )
    return "\n".join(lines) + "\n"
