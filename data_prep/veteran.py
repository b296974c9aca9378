"""SAM-Veteran's mask-comprehension and auxiliary sets, derived from its grounding rows (section 4.2, A.4).

- Mask comprehension: SAM2 segments each grounding row's GT box on the 840 image; the edge-excluded IoU of that
  mask sorts the row into Good Enough (IoU == 1) or Need Refinement (IoU < 0.9), rows in between are dropped, and
  both cases are sampled to equal size. The SAM mask is stored as ``init_mask`` for the rollout's overlay.
- Auxiliary: each GT mask is corrupted by a random polygon inclusion and/or exclusion (probability 0.5 each); the
  corrupted mask is ``init_mask`` and each error region is stored with the centre a click should aim at.
"""

from __future__ import annotations

import argparse
import copy
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from data_prep.corruption import corrupt_mask
from data_prep.schema import ROW
from data_prep.shards import Report, atomic_write_table
from recipe.common.prompts import build_messages
from reward_server.config import load_preset
from reward_server.engine import SamEngine
from reward_server.masks import decode_rle, encode_rle, region_center
from reward_server.protocol import ImageRef, Prompt, SegRequest, content_key

GOOD_ENOUGH, NEED_REFINEMENT = "good_enough", "need_refinement"
TASK_AGENTS = {
    "mask_comprehension": "veteran_mask_comprehension",
    "auxiliary": "veteran_auxiliary",
    "workflow": "veteran_workflow",
}


@dataclass(frozen=True)
class Thresholds:
    good_enough: float = 1.0  # edge-excluded IoU at or above: the mask needs no click
    need_refinement: float = 0.9  # below: the mask needs refinement


def iter_rows(path: str | Path, batch_size: int = 64) -> Iterator[list[dict[str, Any]]]:
    """Rows of a parquet file in batches, without loading every image at once."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        yield batch.to_pylist()


def task_row(row: dict[str, Any], task: str, ground_truth_updates: dict[str, Any]) -> dict[str, Any]:
    """A grounding row re-posed as a refinement task: the ``Q^P`` prompt, its agent loop, extra ground truth."""
    derived = copy.deepcopy(row)
    derived["prompt"] = build_messages(task, row["extra_info"]["question"])
    derived["agent_name"] = TASK_AGENTS[task]
    derived["extra_info"]["task"] = task
    derived["reward_model"]["ground_truth"].update(ground_truth_updates)
    return derived


def classify(edge_iou: float, thresholds: Thresholds) -> str | None:
    if edge_iou >= thresholds.good_enough:
        return GOOD_ENOUGH
    if edge_iou < thresholds.need_refinement:
        return NEED_REFINEMENT
    return None


def score_grounding_rows(
    engine: SamEngine, path: str | Path, thresholds: Thresholds, batch_size: int
) -> tuple[dict[int, dict[str, Any]], list[dict[str, str]]]:
    """SAM2's mask of each row's GT box, its edge-excluded IoU and case, by row position."""
    scored, skipped = {}, []
    position = 0
    total = pq.ParquetFile(path).metadata.num_rows
    with tqdm(total=total, desc="SAM2 on GT boxes", unit="row") as progress:
        for rows in iter_rows(path, batch_size):
            images, requests, ground_truths = {}, [], {}
            for row in rows:
                truth = row["reward_model"]["ground_truth"]
                image = ImageRef.of(row["images"][0]["bytes"])
                gt_key = content_key(truth["mask"])
                images[image.key], ground_truths[gt_key] = image.data, truth["mask"]
                requests.append(SegRequest(image.key, Prompt(box=tuple(truth["box"])), gt_key=gt_key))
            for offset, result in enumerate(engine.segment(requests, images, ground_truths)):
                key = rows[offset]["extra_info"]["key"]
                if not result.ok:
                    skipped.append({"key": key, "reason": f"SAM2 failed on the GT box: {result.error}"})
                elif (case := classify(result.edge_iou, thresholds)) is not None:
                    scored[position + offset] = {
                        "init_mask": result.mask,
                        "init_edge_iou": result.edge_iou,
                        "case": case,
                    }
            position += len(rows)
            progress.update(len(rows))
    return scored, skipped


def balance(scored: dict[int, dict[str, Any]], seed: int, max_per_case: int | None) -> set[int]:
    """Equal numbers of Good Enough and Need Refinement rows, drawn reproducibly."""
    by_case = {
        case: sorted(i for i, s in scored.items() if s["case"] == case) for case in (GOOD_ENOUGH, NEED_REFINEMENT)
    }
    count = min(len(rows) for rows in by_case.values())
    if max_per_case is not None:
        count = min(count, max_per_case)
    rng = random.Random(seed)
    return {i for rows in by_case.values() for i in rng.sample(rows, count)}


def build_mask_comprehension(
    grounding: str | Path,
    out: str | Path,
    engine: SamEngine,
    seed: int = 0,
    max_per_case: int | None = None,
    thresholds: Thresholds = Thresholds(),
    batch_size: int = 64,
    balanced: bool = True,
) -> Report:
    """Writes the mask-comprehension set; see the module docstring. ``balanced=False`` keeps every scored row."""
    scored, skipped = score_grounding_rows(engine, grounding, thresholds, batch_size)
    chosen = balance(scored, seed, max_per_case) if balanced else set(scored)
    rows, position = [], 0
    for batch in iter_rows(grounding, batch_size):
        rows += [
            task_row(row, "mask_comprehension", scored[position + i])
            for i, row in enumerate(batch)
            if position + i in chosen
        ]
        position += len(batch)
    cases = {case: sum(s["case"] == case for s in scored.values()) for case in (GOOD_ENOUGH, NEED_REFINEMENT)}
    report = Report(str(out), rows=len(rows), skipped=skipped)
    report.notes.append(f"scored {cases}, {len(scored) - len(chosen)} left out by balancing")
    _write(rows, report)
    return report


def auxiliary_updates(truth: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """The corrupted mask, its case and each error region with its centre."""
    corruption = corrupt_mask(decode_rle(truth["mask"]), rng)

    def region(mask: np.ndarray | None) -> dict[str, Any] | None:
        return None if mask is None else {"mask": encode_rle(mask), "center": list(region_center(mask))}

    return {
        "init_mask": encode_rle(corruption.mask),
        "case": corruption.case,
        "false_positive": region(corruption.false_positive),
        "false_negative": region(corruption.false_negative),
    }


def build_auxiliary(grounding: str | Path, out: str | Path, seed: int = 0) -> Report:
    """Writes the auxiliary set: one corrupted (or intact, for "no error") copy of every grounding row."""
    rows = []
    for batch in iter_rows(grounding):
        for row in batch:
            rng = np.random.default_rng([seed, row["extra_info"]["index"]])
            rows.append(task_row(row, "auxiliary", auxiliary_updates(row["reward_model"]["ground_truth"], rng)))
    report = Report(str(out), rows=len(rows))
    report.notes.append(f"cases {dict(Counter(row['reward_model']['ground_truth']['case'] for row in rows))}")
    _write(rows, report)
    return report


def build_workflow(grounding: str | Path, out: str | Path) -> Report:
    """Writes grounding rows for the on-policy multi-turn workflow loop (same prompt, agent ``veteran_workflow``)."""
    rows = []
    for batch in iter_rows(grounding):
        for row in batch:
            workflow = copy.deepcopy(row)
            workflow["agent_name"] = TASK_AGENTS["workflow"]
            workflow["extra_info"]["task"] = "workflow"
            rows.append(workflow)
    report = Report(str(out), rows=len(rows))
    _write(rows, report)
    return report


def _write(rows: list[dict[str, Any]], report: Report) -> None:
    atomic_write_table(pa.Table.from_pylist(rows, schema=ROW), Path(report.output))
    report.save()


def run_veteran(args: argparse.Namespace) -> Report:
    overrides = {"engine.device": args.sam_device}
    if args.sam_checkpoint:
        overrides["engine.checkpoint"] = args.sam_checkpoint
    engine = SamEngine(load_preset(args.sam, overrides).engine)
    mask = build_mask_comprehension(
        args.grounding, args.out_mask, engine, args.seed, args.max_per_case, balanced=not args.no_balance
    )
    auxiliary = build_auxiliary(args.grounding, args.out_aux, args.seed)
    if args.out_workflow:
        print(build_workflow(args.grounding, args.out_workflow).summary())
    print(mask.summary())
    return auxiliary


def add_veteran_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("veteran", help="SAM-Veteran mask-comprehension and auxiliary sets")
    parser.add_argument("--grounding", required=True, help="grounding rows (refer ... --recipe veteran)")
    parser.add_argument("--out-mask", required=True, help="mask-comprehension parquet")
    parser.add_argument("--out-aux", required=True, help="auxiliary parquet")
    parser.add_argument("--out-workflow", default=None, help="also write rows for the multi-turn workflow loop")
    parser.add_argument("--sam", default="large", help="reward_server preset (large, tiny_cpu)")
    parser.add_argument("--sam-checkpoint", default=None, help="SAM2 checkpoint path or hub id")
    parser.add_argument("--sam-device", default="auto")
    parser.add_argument("--max-per-case", type=int, default=None, help="cap per case after balancing")
    parser.add_argument("--no-balance", action="store_true", help="keep every scored row (inspection, smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run_veteran)
