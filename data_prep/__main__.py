"""``python -m data_prep <command>``: build verl parquet files from the standard downloads.

Commands:
    refer      RefCOCO / RefCOCO+ / RefCOCOg (LISA's refer layout) -> training or evaluation rows
    reasonseg  ReasonSeg (LISA json) -> evaluation (or training) rows
    grefcoco   gRefCOCO (several objects or none per expression) -> generalized training or evaluation rows
    veteran    SAM-Veteran's mask-comprehension and auxiliary sets, derived from its grounding rows
    custom     your own JSONL or CSV of image, question, mask or masks (polygons, COCO RLE or PNG) [, ignore]
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
from collections.abc import Sequence

from data_prep.custom import custom_inputs, read_custom, render_custom, render_custom_objects
from data_prep.grefcoco import SPLITS as GREFCOCO_SPLITS
from data_prep.grefcoco import read_grefcoco
from data_prep.reasonseg import check_split_size, read_reasonseg
from data_prep.refer import SPLIT_BY, read_id_file, read_refer
from data_prep.rows import RECIPE_TASKS, RowOptions, build_row
from data_prep.safe_pickle import UnsafePickleError
from data_prep.samples import SourceSample
from data_prep.shards import Report, write_dataset


def sample_subset(samples: list[SourceSample], limit: int | None, seed: int) -> list[SourceSample]:
    """``limit`` samples drawn reproducibly with ``seed`` (all of them, in order, without a limit)."""
    if not limit or limit >= len(samples):
        return samples
    return random.Random(seed).sample(samples, limit)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output parquet file")
    parser.add_argument("--limit", type=int, default=None, help="draw this many samples (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", choices=sorted(RECIPE_TASKS), default="samr1", help="prompt and task of the rows")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--shard-size", type=int, default=256)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    refer = commands.add_parser("refer", help="RefCOCO/+/g expressions -> parquet")
    refer.add_argument("--dataset", required=True, choices=sorted(SPLIT_BY))
    refer.add_argument("--split", required=True, help="train, val, test (umd) or testA, testB (unc)")
    refer.add_argument("--refer-root", required=True, help="directory holding <dataset>/instances.json and refs(*).p")
    refer.add_argument("--image-root", required=True, help="directory of the COCO train2014 images")
    refer.add_argument("--ids", default=None, help="file of ref_ids, one per line: read only these refs")
    _common(refer)
    reasonseg = commands.add_parser("reasonseg", help="ReasonSeg (LISA json) -> parquet")
    reasonseg.add_argument("--root", required=True, help="the ReasonSeg directory (train/, val/, test/)")
    reasonseg.add_argument("--split", required=True, choices=["train", "val", "test"])
    reasonseg.add_argument("--all-texts", action="store_true", help="one row per text (default: the first, as LISA)")
    _common(reasonseg)
    grefcoco = commands.add_parser("grefcoco", help="gRefCOCO (several objects or none) -> generalized rows")
    grefcoco.add_argument("--root", required=True, help="directory holding grefs(unc).json and instances.json")
    grefcoco.add_argument("--image-root", required=True, help="directory of the COCO train2014 images")
    grefcoco.add_argument("--split", required=True, choices=GREFCOCO_SPLITS)
    _common(grefcoco)
    custom = commands.add_parser("custom", help="your own JSONL or CSV of images, questions and masks -> parquet")
    custom.add_argument("--file", required=True, help="a .jsonl or .csv file (see data_prep/custom.py)")
    custom.add_argument("--split", required=True, choices=["train", "val", "test"], help="train: training rows")
    custom.add_argument("--name", default="custom", help="dataset name: rows get data_source <name>_<split>")
    _common(custom)
    from data_prep.veteran import add_veteran_command

    add_veteran_command(commands)
    return parser


def run_sources(args: argparse.Namespace) -> Report:
    if args.command == "refer":
        ref_ids = read_id_file(args.ids) if args.ids else None
        samples, skipped = read_refer(args.refer_root, args.image_root, args.dataset, args.split, ref_ids)
        inputs = {"refer_root": args.refer_root, "image_root": args.image_root, "dataset": args.dataset}
        if ref_ids is not None:
            inputs["ids"] = sorted(ref_ids)
    elif args.command == "grefcoco":
        samples, skipped = read_grefcoco(args.root, args.image_root, args.split)
        inputs = {"root": args.root, "image_root": args.image_root}
    elif args.command == "custom":
        samples, skipped = read_custom(args.file, args.split, args.name)
        inputs = custom_inputs(args.file, args.name)
    else:
        samples, skipped = read_reasonseg(args.root, args.split, args.all_texts)
        inputs = {"root": args.root, "all_texts": args.all_texts}
    chosen = sample_subset(samples, args.limit, args.seed)
    evaluation = args.split != "train"
    options = RowOptions(recipe=args.recipe, keep_original_image=evaluation, keep_empty_targets=evaluation)
    fingerprint = {"command": args.command, "split": args.split, "limit": args.limit, "seed": args.seed, **inputs}
    fingerprint.update(options.__dict__)
    builder = functools.partial(build_row, options=options)
    if args.command == "custom":
        builder = functools.partial(builder, render=render_custom, objects_renderer=render_custom_objects)
    report = write_dataset(chosen, builder, args.out, fingerprint, skipped, args.shard_size, args.workers)
    if args.command == "reasonseg" and len(chosen) == len(samples):  # a --limit draw has no published size
        check_split_size(report, args.split, samples)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = args.run(args) if hasattr(args, "run") else run_sources(args)
    except (ValueError, UnsafePickleError) as err:
        print(f"data_prep {args.command}: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
