"""From per-sample records to the papers' numbers: gIoU/cIoU and box accuracy per dataset, per-step curves and time
per sample.

Metrics are accumulated with :class:`recipe.task.metrics.SegMetrics` from the intersections and unions stored in
the records, so a summary can be recomputed at any time from the records alone (e.g. of a run still going). A
dataset of generalized rows (gRefCOCO: several objects or none) is scored as gRefCOCO's authors score it
(:class:`recipe.task.metrics.GeneralizedMetrics`): its gIoU and cIoU count no-target samples their way, and it
adds the no-target accuracy ``N_acc`` and the target accuracy ``T_acc``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from recipe.evaluate.records import mask_overlap
from recipe.task.metrics import GeneralizedMetrics, SegMetrics

DATASET_LABELS = {
    "reasonseg_val": "ReasonSeg val",
    "reasonseg_test": "ReasonSeg test",
    "refcoco_testA": "RefCOCO testA",
    "refcoco+_testA": "RefCOCO+ testA",
    "refcocog_test": "RefCOCOg test",
}
"""The papers' column order (SAM-Veteran Table 3, SAM-R1 Tables 1 and 2); other datasets follow by name."""


GENERALIZED_NOTE = (
    "gRefCOCO convention (ReLA's evaluator) on datasets of generalized rows: a correct none scores 1, an answer "
    "for an absent object 0, N-acc over no-target samples, T-acc over the others"
)

CONVENTION_NOTES = {
    "lisa": "lisa convention: ignore pixels excluded, an empty union scores 1",
    "seg_zero": "seg_zero convention: ignore pixels are target, an empty union is dropped",
}
"""How each convention scores (``recipe.task.metrics``), in the notes under every table."""


def dataset_order(names: Iterable[str]) -> list[str]:
    known = [name for name in DATASET_LABELS if name in names]
    return known + sorted(set(names) - set(known))


def dataset_metrics(records: Iterable[dict[str, Any]], convention: str = "lisa") -> dict[str, SegMetrics]:
    """One accumulator per dataset over the scored records (skipped rows are left out)."""
    metrics: dict[str, SegMetrics] = defaultdict(lambda: SegMetrics(convention))
    for record in records:
        if "skipped" in record:
            continue
        accumulator = metrics[record["dataset"]]
        accumulator.add(accumulator.sample_iou(record["intersection"], record["union"], failed=record["failed"]))
    return dict(metrics)


BOX_IOU_THRESHOLD = 0.5
"""A box is correct when its IoU with the GT box exceeds this (the REC accuracy of SAM-R1's Table 5)."""


def is_generalized(records: Iterable[dict[str, Any]]) -> bool:
    """Whether the records are of generalized rows (their records carry ``no_target``)."""
    return any("no_target" in record for record in records)


def generalized_metrics(records: Iterable[dict[str, Any]], last: int | None = None) -> GeneralizedMetrics:
    """gRefCOCO's metrics over generalized records, from the mask in effect after step ``last`` (default: the
    final one)."""
    metrics = GeneralizedMetrics()
    for record in records:
        if "skipped" in record:
            continue
        intersection, union = record["intersection"], record["union"]
        if last is not None:
            intersection, union, _ = mask_overlap(record["steps"], record["gt_area"], last)
        metrics.add(intersection, union, record["no_target"], record["said_none"])
    return metrics


def box_accuracy(records: Iterable[dict[str, Any]]) -> dict[str, float | int]:
    """``box_acc``: the share of samples with a GT box whose first-step box has IoU > 0.5 with it (a failed answer
    is a miss); ``n_box``: how many samples had a GT box (NaN accuracy when none did)."""
    ious = [record["box_iou"] for record in records if record.get("box_iou") is not None]
    hits = sum(iou > BOX_IOU_THRESHOLD for iou in ious)
    return {"box_acc": hits / len(ious) if ious else math.nan, "n_box": len(ious)}


def _stopped_at(record: dict[str, Any]) -> int | None:
    """The step whose mask the model accepted by answering (null, null), or None.

    Step k's mask is shown in the turn after it, so a stop in the first refinement turn accepts the grounding mask
    (step 0), and a stop in turn k + 1 the mask of refinement step k.
    """
    return len(record["steps"]) - 2 if record["termination"] == "stop" else None


def step_curves(records: Sequence[dict[str, Any]], max_steps: int, convention: str = "lisa") -> list[dict[str, float]]:
    """SAM-Veteran's Figure 3: IoU after each refinement step and the share of samples terminated by then.

    Step 0 is the grounding box's mask. A sample that stopped (or ended) earlier keeps its last mask. A sample has
    terminated at step k when the model accepted the mask of step k or of an earlier step (:func:`_stopped_at`).
    """
    scored = [record for record in records if "skipped" not in record]
    curve = []
    for step in range(max_steps + 1):
        if is_generalized(scored):
            summary = generalized_metrics(scored, step).summary()
        else:
            metrics = SegMetrics(convention)
            for record in scored:
                intersection, union, has_mask = mask_overlap(record["steps"], record["gt_area"], step)
                metrics.add(metrics.sample_iou(intersection, union, failed=not has_mask))
            summary = metrics.summary()
        stopped = sum(1 for r in scored if (at := _stopped_at(r)) is not None and at <= step)
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
    convention: str = "lisa",
) -> dict[str, Any]:
    """Everything the table and the report need: metrics per dataset and overall, curves, turns and timing.

    Args:
        records: The run's records.
        method: The method's name in the table.
        mode: The evaluation mode.
        max_steps: Refinement steps of an iterative mode (curves are computed when given).
        convention: The metrics convention the records were scored under (``recipe.task.metrics``).
    """
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_dataset[record["dataset"]].append(record)
    metrics = dataset_metrics(records, convention)
    datasets = {}
    for name in dataset_order(by_dataset):
        accumulator = metrics.get(name, SegMetrics(convention))
        scored = [r for r in by_dataset[name] if "skipped" not in r]
        datasets[name] = {
            **accumulator.summary(),
            **box_accuracy(scored),
            "n_skipped": len(by_dataset[name]) - len(scored),
            "turns_per_sample": _mean(len(r["steps"]) for r in scored),
        }
        if is_generalized(scored):
            datasets[name].update(generalized_metrics(scored).summary(), convention="grefcoco")
        if max_steps is not None:
            datasets[name]["steps"] = step_curves(scored, max_steps, convention)
    scored = [r for r in records if "skipped" not in r]
    timing = {key: _mean(r["timing"][key] for r in scored) for key in ("total_s", "generate_s", "sam_s")}
    return {
        "method": method,
        "mode": mode,
        "convention": convention,
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


def _convention_note(convention: str) -> str:
    return CONVENTION_NOTES.get(convention, f"{convention} convention")


def _percent(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    """The papers' layout: one row per method with its metrics convention, gIoU and cIoU (%) per dataset, then
    seconds per sample; below it the box accuracy (%) per dataset and each run's sample counts."""
    names = dataset_order({name for summary in summaries for name in summary["datasets"]})
    labels = [DATASET_LABELS.get(name, name) for name in names]
    header = ["Method", "Convention"] + [f"{label} {metric}" for label in labels for metric in ("gIoU", "cIoU")]
    header += ["s/sample", "SAM2 s/sample"]
    boxes_header = ["Method"] + [f"{label} box acc@{BOX_IOU_THRESHOLD}" for label in labels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    boxes = ["| " + " | ".join(boxes_header) + " |", "|" + "---|" * len(boxes_header)]
    for summary in summaries:
        cells, box_cells = [summary["method"], summary["convention"]], [summary["method"]]
        for name in names:
            entry = summary["datasets"].get(name)
            cells += [_percent(entry["gIoU"]), _percent(entry["cIoU"])] if entry else ["—", "—"]
            box_cells.append(_percent(entry.get("box_acc", math.nan)) if entry else "—")
        cells += [f"{summary['s_per_sample']:.3f}", f"{summary['sam_s_per_sample']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
        boxes.append("| " + " | ".join(box_cells) + " |")
    accuracy_names = [n for n in names if any("N_acc" in s["datasets"].get(n, {}) for s in summaries)]
    accuracies = []
    if accuracy_names:
        labels_nt = [DATASET_LABELS.get(name, name) for name in accuracy_names]
        header_nt = ["Method"] + [f"{label} {metric}" for label in labels_nt for metric in ("N-acc", "T-acc")]
        accuracies = ["| " + " | ".join(header_nt) + " |", "|" + "---|" * len(header_nt)]
        for summary in summaries:
            cells = [summary["method"]]
            for name in accuracy_names:
                entry = summary["datasets"].get(name, {})
                cells += [_percent(entry.get("N_acc", math.nan)), _percent(entry.get("T_acc", math.nan))]
            accuracies.append("| " + " | ".join(cells) + " |")
        accuracies += ["", f"- {GENERALIZED_NOTE}", ""]
    notes = []
    for summary in summaries:
        counts = ", ".join(
            f"{DATASET_LABELS.get(name, name)}: n={entry['n']}, failed={entry['n_failed']}"
            + (f", dropped={entry['n_dropped']}" if entry.get("n_dropped") else "")
            + (f", skipped={entry['n_skipped']}" if entry["n_skipped"] else "")
            + (f", no target={entry['n_no_target']}" if "n_no_target" in entry else "")
            + f", with a GT box={entry.get('n_box', 0)}"
            for name, entry in summary["datasets"].items()
        )
        notes.append(f"- {summary['method']} ({_convention_note(summary['convention'])}): {counts}")
    return "\n".join([*lines, "", *boxes, "", *accuracies, *notes]) + "\n"


def steps_table(summary: dict[str, Any]) -> str:
    """SAM-Veteran's Figure 3 as a table: IoU (and its change since step 0) and termination ratio per step, with
    its metrics convention."""
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
    note = (
        f"- per-step IoU ({_convention_note(summary['convention'])}); terminated: the share of samples whose model "
        "accepted the mask of that step or an earlier one"
    )
    return "\n".join([*lines, "", note]) + "\n"
