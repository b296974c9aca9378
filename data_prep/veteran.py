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
import functools
import hashlib
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from data_prep.corruption import SEED_RETRIES, Corruption, corrupt_mask
from data_prep.samples import Skipped
from data_prep.schema import GROUND_TRUTH, ROW
from data_prep.shards import Report, write_dataset
from recipe.task.dataset_rows import (
    AUXILIARY,
    GOOD_ENOUGH,
    GOOD_ENOUGH_IOU,
    MASK_COMPREHENSION,
    NEED_REFINEMENT,
    NEED_REFINEMENT_IOU,
    TASK_AGENTS,
    WORKFLOW,
    GroundTruth,
    Region,
    RewardModel,
    Row,
)
from recipe.task.prompts import build_messages
from recipe.task.stored_logits import encode_logits
from reward_server.config import load_preset
from reward_server.engine import SamEngine
from reward_server.masks import decode_rle, encode_rle, region_center
from reward_server.protocol import ImageRef, Prompt, SegRequest, content_key
from reward_server.segmenters import build_engine

CASE_MIXES: dict[str, tuple[int, int] | None] = {
    "paper": (600, 700),  # A.4: 600 Good Enough, about 700 Need Refinement on the 9k set
    "equal": (1, 1),
    "all": None,  # every scored row (inspection, smoke runs with random SAM2 weights)
}
"""(Good Enough, Need Refinement) proportions of the mask-comprehension set, by ``--case-mix``."""


@dataclass(frozen=True)
class Thresholds:
    good_enough: float = GOOD_ENOUGH_IOU  # edge-excluded IoU at or above: the mask needs no click
    need_refinement: float = NEED_REFINEMENT_IOU  # below: the mask needs refinement


@dataclass(frozen=True)
class ScoredMask:
    """SAM2's mask of a grounding row's GT box, as the mask-comprehension row shows it.

    Attributes:
        mask: The mask (COCO RLE at 840).
        edge_iou: Its edge-excluded IoU with the ground truth.
        logits: Its low-resolution logits (``recipe.task.stored_logits``).
        case: :data:`GOOD_ENOUGH` or :data:`NEED_REFINEMENT`.
    """

    mask: dict[str, Any]
    edge_iou: float
    logits: dict[str, Any]
    case: str

    def shown_on(self, truth: GroundTruth) -> GroundTruth:
        """``truth`` with this mask as the one shown for refinement."""
        return truth.replace(init_mask=self.mask, init_edge_iou=self.edge_iou, init_logits=self.logits, case=self.case)


def check_row_schema(path: str | Path) -> None:
    """Refuses grounding rows written with another row schema: the derived sets would not concatenate with them.

    Raises:
        ValueError: Naming the missing ground-truth fields and the commands that rebuild the files.
    """
    schema = pq.read_schema(path).remove_metadata()
    if schema.equals(ROW):
        return
    reward_model = Row.reward_model.name
    truth = (
        schema.field(reward_model).type.field(RewardModel.ground_truth.name).type
        if reward_model in schema.names
        else None
    )
    missing = sorted(set(GROUND_TRUTH.names) - {f.name for f in truth}) if isinstance(truth, pa.StructType) else []
    lacking = f"; its ground truth lacks {missing}" if missing else ""
    raise ValueError(
        f"{path} was written with another row schema{lacking}, and the derived sets would not concatenate with it: "
        "rebuild it with `make data`, then rerun `make data-veteran`"
    )


def iter_rows(path: str | Path, batch_size: int = 64) -> Iterator[list[Row]]:
    """Rows of a parquet file in batches, without loading every image at once."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        yield [Row(row) for row in batch.to_pylist()]


def task_row(row: Row, task: str, truth: GroundTruth) -> Row:
    """A grounding row re-posed as a refinement task: the ``Q^P`` prompt, its agent loop, its ground truth."""
    return row.with_ground_truth(truth).replace(
        prompt=build_messages(task, row.extra_info.question),
        agent_name=TASK_AGENTS[task],
        extra_info=row.extra_info.replace(task=task),
    )


def build_task_row(item: tuple[Row, GroundTruth], index: int, task: str) -> dict[str, Any]:
    """:func:`data_prep.shards.write_dataset`'s builder of a refinement set: the item's grounding row re-posed as
    ``task`` with the item's ground truth. The row keeps its grounding ``extra_info.index``, so ``index`` (the
    position in the derived set) is unused."""
    row, truth = item
    return task_row(row, task, truth).to_dict()


def build_workflow_row(row: Row, index: int) -> dict[str, Any]:
    """:func:`data_prep.shards.write_dataset`'s builder of the workflow set: the grounding row (prompt and ground
    truth unchanged) for the workflow loop; it keeps its grounding ``extra_info.index``, so ``index`` is unused."""
    return row.replace(agent_name=TASK_AGENTS[WORKFLOW], extra_info=row.extra_info.replace(task=WORKFLOW)).to_dict()


def classify(edge_iou: float, thresholds: Thresholds) -> str | None:
    """The mask-comprehension case of a mask of edge-excluded IoU ``edge_iou``, or None between the thresholds."""
    if edge_iou >= thresholds.good_enough:
        return GOOD_ENOUGH
    if edge_iou < thresholds.need_refinement:
        return NEED_REFINEMENT
    return None


GENERALIZED_MASK_COMPREHENSION = (
    "a generalized row (several objects or none): mask comprehension refines one object's SAM2 mask and takes the "
    "papers' rows; the workflow refines the union of several"
)


def score_grounding_rows(
    engine: SamEngine, path: str | Path, thresholds: Thresholds, batch_size: int
) -> tuple[dict[int, ScoredMask], list[Skipped]]:
    """SAM2's mask of each row's GT box, its edge-excluded IoU and case, by row position."""
    scored, skipped = {}, []
    position = 0
    total = pq.ParquetFile(path).metadata.num_rows
    with tqdm(total=total, desc="SAM2 on GT boxes", unit="row") as progress:
        for batch in iter_rows(path, batch_size):
            images, requests, ground_truths = {}, [], {}
            rows = [(offset, row) for offset, row in enumerate(batch) if not row.ground_truth.generalized]
            skipped += [
                Skipped(row.extra_info.key, GENERALIZED_MASK_COMPREHENSION)
                for row in batch
                if row.ground_truth.generalized
            ]
            for _, row in rows:
                truth = row.ground_truth
                image = ImageRef.of(row.image_bytes)
                gt_key = content_key(truth.mask)
                images[image.key], ground_truths[gt_key] = image.data, truth.mask
                prompt = Prompt(box=tuple(truth.box))
                requests.append(SegRequest(image.key, prompt, gt_key=gt_key, return_logits=True, return_edge_iou=True))
            results = engine.segment(requests, images, ground_truths) if requests else []
            for (offset, row), result in zip(rows, results, strict=True):
                key = row.extra_info.key
                if not result.ok:
                    skipped.append(Skipped(key, f"SAM2 failed on the GT box: {result.error}"))
                elif result.logits is None:
                    skipped.append(Skipped(key, "SAM2 returned no logits for the GT box"))
                elif (case := classify(result.edge_iou, thresholds)) is not None:
                    scored[position + offset] = ScoredMask(
                        result.mask, result.edge_iou, encode_logits(result.logits), case
                    )
            position += len(batch)
            progress.update(len(batch))
    return scored, skipped


def case_counts(available: tuple[int, int], mix: tuple[int, int], max_per_case: int | None) -> tuple[int, int]:
    """How many Good Enough and Need Refinement rows to keep: the most rows in the proportions ``mix`` that the
    ``available`` rows (and ``max_per_case``, for the larger part) allow, each count rounded (halves to even)."""
    scale = min(Fraction(have, part) for have, part in zip(available, mix, strict=True))
    if max_per_case is not None:
        scale = min(scale, Fraction(max_per_case, max(mix)))
    return tuple(min(have, round(part * scale)) for have, part in zip(available, mix, strict=True))


def select_cases(scored: dict[int, ScoredMask], mix: str, seed: int, max_per_case: int | None) -> set[int]:
    """The scored rows kept for the case mix ``mix`` (a key of :data:`CASE_MIXES`), drawn reproducibly."""
    by_case = [sorted(i for i, s in scored.items() if s.case == case) for case in (GOOD_ENOUGH, NEED_REFINEMENT)]
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
    items, position = [], 0
    for batch in iter_rows(grounding, batch_size):
        items += [
            (row, scored[position + i].shown_on(row.ground_truth))
            for i, row in enumerate(batch)
            if position + i in chosen
        ]
        position += len(batch)
    scored_cases = Counter(s.case for s in scored.values())
    kept = Counter(scored[i].case for i in chosen)
    # The draw depends on SAM2's scores: shards of a run that drew other rows are never reused.
    options = {"seed": seed, "case_mix": case_mix, "max_per_case": max_per_case, "chosen": sorted(chosen)}
    report = _write(items, MASK_COMPREHENSION, grounding, out, skipped, {**options, **thresholds.__dict__})
    between = position - len(scored) - len(skipped)
    report.notes.append(
        f"case mix {case_mix}: kept {kept[GOOD_ENOUGH]} Good Enough of {scored_cases[GOOD_ENOUGH]}, "
        f"{kept[NEED_REFINEMENT]} Need Refinement of {scored_cases[NEED_REFINEMENT]}; {between} rows between the "
        "thresholds left out"
    )
    report.save()
    return report


def auxiliary_truth(truth: GroundTruth, rng: np.random.Generator) -> tuple[GroundTruth, Corruption]:
    """``truth`` with the corrupted mask, its case and each error region with its centre; and the corruption, for
    the report."""
    corruption = corrupt_mask(decode_rle(truth.mask), rng)

    def region(mask: np.ndarray | None) -> Region | None:
        return None if mask is None else Region.build(mask=encode_rle(mask), center=list(region_center(mask)))

    corrupted = truth.replace(
        init_mask=encode_rle(corruption.mask),
        case=corruption.case,
        false_positive=region(corruption.false_positive),
        false_negative=region(corruption.false_negative),
    )
    return corrupted, corruption


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
    items, corruptions, skipped = [], [], []
    for batch in iter_rows(grounding):
        for row in batch:
            if row.ground_truth.generalized and not row.ground_truth.objects:
                skipped.append(Skipped(row.extra_info.key, "a no-target row: there is no mask to corrupt"))
                continue
            rng = np.random.default_rng([seed, row.extra_info.index])
            truth, corruption = auxiliary_truth(row.ground_truth, rng)
            items.append((row, truth))
            corruptions.append(corruption)
    report = _write(items, AUXILIARY, grounding, out, skipped, {"seed": seed})
    report.notes.append(f"cases {dict(Counter(c.case for c in corruptions))}")
    report.notes += corruption_notes(corruptions)
    report.save()
    return report


def build_workflow(grounding: str | Path, out: str | Path) -> Report:
    """Writes grounding rows for the on-policy multi-turn workflow loop (same prompt, agent ``veteran_workflow``)."""
    rows = [row for batch in iter_rows(grounding) for row in batch]
    return _write(rows, WORKFLOW, grounding, out, [], {})


def _write(
    items: Sequence[Any],
    task: str,
    grounding: str | Path,
    out: str | Path,
    skipped: Sequence[Skipped],
    options: dict[str, Any],
) -> Report:
    """Writes the ``task`` rows of ``items`` (grounding rows for the workflow, else (row, ground truth) pairs) with
    data_prep's one writer, :func:`data_prep.shards.write_dataset` (sharded, resumable, atomic), and its report;
    the caller adds its notes and saves the report again.

    Args:
        items: What the task's builder takes.
        task: The derived task.
        grounding: The grounding rows the items come from.
        out: The task's parquet.
        skipped: Rows left out before building, for the report.
        options: What else determines the rows, for the resume fingerprint.
    """
    with open(grounding, "rb") as handle:  # a rebuilt grounding file never reuses shards
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    builder = build_workflow_row if task == WORKFLOW else functools.partial(build_task_row, task=task)
    fingerprint = {"command": "veteran", "task": task, "grounding": str(Path(grounding).absolute()), "sha256": digest}
    return write_dataset(items, builder, out, {**fingerprint, **options}, skipped)


def run_veteran(args: argparse.Namespace) -> Report:
    overrides = {"engine.device": args.sam_device}
    if args.sam_checkpoint:
        overrides["engine.checkpoint"] = args.sam_checkpoint
    engine = build_engine(load_preset(args.sam, overrides).engine)
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
    parser.add_argument("--sam", default="large", help="reward_server preset (large, sam3, tiny_cpu)")
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
