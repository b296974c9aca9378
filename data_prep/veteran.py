"""SAM-Veteran's mask-comprehension and auxiliary sets, derived from its grounding rows (section 4.2, A.4).

- Mask comprehension: SAM2 segments each grounding row's GT box on the 840 image; the edge-excluded IoU of that
  mask sorts the row into Good Enough (IoU == 1) or Need Refinement (IoU < 0.9), rows in between are dropped, and
  the cases are sampled in the paper's proportions (600 Good Enough to 700 Need Refinement on the 9k set, A.4), or
  to equal size. The SAM mask is stored as ``init_mask`` for the rollout's overlay, with its edge-excluded IoU
  (the IoU gain's baseline) and its low-resolution logits (``init_logits``): a refinement sends exactly those
  logits, so training calls SAM2 once per rollout and refines the mask it showed.
- Auxiliary: each GT mask is corrupted by a random polygon inclusion and/or exclusion (probability 0.5 each); the
  corrupted mask is ``init_mask`` and each error region is stored with the centre a click should aim at. An error
  no polygon fits is retried with new seeds; the closing report gives the realised rates.
"""

from __future__ import annotations

import argparse
import copy
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from data_prep.corruption import SEED_RETRIES, Corruption, corrupt_mask
from data_prep.schema import GROUND_TRUTH, ROW
from data_prep.shards import Report, atomic_write_table
from recipe.common.prompts import build_messages
from recipe.common.stored_logits import encode_logits
from reward_server.config import load_preset
from reward_server.engine import SamEngine
from reward_server.masks import decode_rle, encode_rle, region_center
from reward_server.protocol import ImageRef, Prompt, SegRequest, content_key

GOOD_ENOUGH, NEED_REFINEMENT = "good_enough", "need_refinement"
CASE_MIXES: dict[str, tuple[int, int] | None] = {
    "paper": (600, 700),  # A.4: 600 Good Enough, about 700 Need Refinement on the 9k set
    "equal": (1, 1),
    "all": None,  # every scored row (inspection, smoke runs with random SAM2 weights)
}
"""(Good Enough, Need Refinement) proportions of the mask-comprehension set, by ``--case-mix``."""
TASK_AGENTS = {
    "mask_comprehension": "veteran_mask_comprehension",
    "auxiliary": "veteran_auxiliary",
    "workflow": "veteran_workflow",
}


@dataclass(frozen=True)
class Thresholds:
    good_enough: float = 1.0  # edge-excluded IoU at or above: the mask needs no click
    need_refinement: float = 0.9  # below: the mask needs refinement


def check_row_schema(path: str | Path) -> None:
    """Refuses grounding rows written with another row schema: the derived sets would not concatenate with them.

    Raises:
        ValueError: Naming the missing ground-truth fields and the commands that rebuild the files.
    """
    schema = pq.read_schema(path).remove_metadata()
    if schema.equals(ROW):
        return
    truth = schema.field("reward_model").type.field("ground_truth").type if "reward_model" in schema.names else None
    missing = sorted(set(GROUND_TRUTH.names) - {f.name for f in truth}) if isinstance(truth, pa.StructType) else []
    lacking = f"; its ground truth lacks {missing}" if missing else ""
    raise ValueError(
        f"{path} was written with another row schema{lacking}, and the derived sets would not concatenate with it: "
        "rebuild it with `make data`, then rerun `make data-veteran`"
    )


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
                prompt = Prompt(box=tuple(truth["box"]))
                requests.append(SegRequest(image.key, prompt, gt_key=gt_key, return_logits=True, return_edge_iou=True))
            for offset, result in enumerate(engine.segment(requests, images, ground_truths)):
                key = rows[offset]["extra_info"]["key"]
                if not result.ok:
                    skipped.append({"key": key, "reason": f"SAM2 failed on the GT box: {result.error}"})
                elif result.logits is None:
                    skipped.append({"key": key, "reason": "SAM2 returned no logits for the GT box"})
                elif (case := classify(result.edge_iou, thresholds)) is not None:
                    scored[position + offset] = {
                        "init_mask": result.mask,
                        "init_edge_iou": result.edge_iou,
                        "init_logits": encode_logits(result.logits),
                        "case": case,
                    }
            position += len(rows)
            progress.update(len(rows))
    return scored, skipped


def case_counts(available: tuple[int, int], mix: tuple[int, int], max_per_case: int | None) -> tuple[int, int]:
    """How many Good Enough and Need Refinement rows to keep: the most rows in the proportions ``mix`` that the
    ``available`` rows (and ``max_per_case``, for the larger part) allow, each count rounded (halves to even)."""
    scale = min(Fraction(have, part) for have, part in zip(available, mix, strict=True))
    if max_per_case is not None:
        scale = min(scale, Fraction(max_per_case, max(mix)))
    return tuple(min(have, round(part * scale)) for have, part in zip(available, mix, strict=True))


def select_cases(scored: dict[int, dict[str, Any]], mix: str, seed: int, max_per_case: int | None) -> set[int]:
    """The scored rows kept for the case mix ``mix`` (a key of :data:`CASE_MIXES`), drawn reproducibly."""
    by_case = [sorted(i for i, s in scored.items() if s["case"] == case) for case in (GOOD_ENOUGH, NEED_REFINEMENT)]
    if CASE_MIXES[mix] is None:
        return set(scored)
    counts = case_counts((len(by_case[0]), len(by_case[1])), CASE_MIXES[mix], max_per_case)
    rng = random.Random(seed)
    return {i for rows, count in zip(by_case, counts, strict=True) for i in rng.sample(rows, count)}


def build_mask_comprehension(
    grounding: str | Path,
    out: str | Path,
    engine: SamEngine,
    seed: int = 0,
    max_per_case: int | None = None,
    thresholds: Thresholds = Thresholds(),
    batch_size: int = 64,
    case_mix: str = "paper",
) -> Report:
    """Writes the mask-comprehension set; see the module docstring.

    Args:
        grounding: The grounding rows.
        out: The mask-comprehension parquet.
        engine: SAM2 (``SamEngine.segment``'s signature).
        seed: Seed of the draw within each case.
        max_per_case: At most this many rows of the case with the larger part of the mix (the proportions kept);
            unused by the ``all`` mix.
        thresholds: Edge-excluded IoUs of the two cases.
        batch_size: Rows per SAM2 call.
        case_mix: A key of :data:`CASE_MIXES`: the paper's proportions, equal sizes, or every scored row.
    """
    if case_mix not in CASE_MIXES:
        raise ValueError(f"case_mix must be one of {sorted(CASE_MIXES)}, got {case_mix!r}")
    check_row_schema(grounding)
    scored, skipped = score_grounding_rows(engine, grounding, thresholds, batch_size)
    chosen = select_cases(scored, case_mix, seed, max_per_case)
    rows, position = [], 0
    for batch in iter_rows(grounding, batch_size):
        rows += [
            task_row(row, "mask_comprehension", scored[position + i])
            for i, row in enumerate(batch)
            if position + i in chosen
        ]
        position += len(batch)
    scored_cases = Counter(s["case"] for s in scored.values())
    kept = Counter(scored[i]["case"] for i in chosen)
    report = Report(str(out), rows=len(rows), skipped=skipped)
    between = position - len(scored) - len(skipped)
    report.notes.append(
        f"case mix {case_mix}: kept {kept[GOOD_ENOUGH]} Good Enough of {scored_cases[GOOD_ENOUGH]}, "
        f"{kept[NEED_REFINEMENT]} Need Refinement of {scored_cases[NEED_REFINEMENT]}; {between} rows between the "
        "thresholds left out"
    )
    _write(rows, report)
    return report


def auxiliary_updates(truth: dict[str, Any], rng: np.random.Generator) -> tuple[dict[str, Any], Corruption]:
    """The corrupted mask, its case and each error region with its centre; and the corruption, for the report."""
    corruption = corrupt_mask(decode_rle(truth["mask"]), rng)

    def region(mask: np.ndarray | None) -> dict[str, Any] | None:
        return None if mask is None else {"mask": encode_rle(mask), "center": list(region_center(mask))}

    updates = {
        "init_mask": encode_rle(corruption.mask),
        "case": corruption.case,
        "false_positive": region(corruption.false_positive),
        "false_negative": region(corruption.false_negative),
    }
    return updates, corruption


def corruption_notes(corruptions: list[Corruption]) -> list[str]:
    """The realised inclusion and exclusion rates, and how many drawn errors needed a retry or found no polygon."""
    total = max(len(corruptions), 1)
    notes = []
    for kind, region in (("inclusion", "false_positive"), ("exclusion", "false_negative")):
        placed = sum(getattr(c, region) is not None for c in corruptions)
        retried = sum(kind in c.retried for c in corruptions)
        missing = sum(kind in c.not_placed for c in corruptions)
        notes.append(
            f"{kind} in {placed} of {len(corruptions)} rows ({placed / total:.1%}); {retried} needed a retry with "
            f"another seed, {missing} drawn but not placed (no polygon fits the object after {1 + SEED_RETRIES} tries)"
        )
    return notes


def build_auxiliary(grounding: str | Path, out: str | Path, seed: int = 0) -> Report:
    """Writes the auxiliary set: one corrupted (or intact, for "no error") copy of every grounding row."""
    check_row_schema(grounding)
    rows, corruptions = [], []
    for batch in iter_rows(grounding):
        for row in batch:
            rng = np.random.default_rng([seed, row["extra_info"]["index"]])
            updates, corruption = auxiliary_updates(row["reward_model"]["ground_truth"], rng)
            rows.append(task_row(row, "auxiliary", updates))
            corruptions.append(corruption)
    report = Report(str(out), rows=len(rows))
    report.notes.append(f"cases {dict(Counter(c.case for c in corruptions))}")
    report.notes += corruption_notes(corruptions)
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
        args.grounding, args.out_mask, engine, args.seed, args.max_per_case, case_mix=args.case_mix
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
    parser.add_argument(
        "--case-mix",
        choices=sorted(CASE_MIXES),
        default="paper",
        help="mask comprehension: paper (600 Good Enough to 700 Need Refinement), equal (exact balance), all rows",
    )
    parser.add_argument("--max-per-case", type=int, default=None, help="at most this many rows of a case (mix kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run_veteran)
