"""The inputs of ``make smoke``: synthetic RefCOCOg rows converted for a recipe, and a tiny random base model
(Qwen2.5-VL, or Qwen3-VL: ``recipe.tiny_vlm``).

SAM-Veteran's inputs hold one file per training task (grounding, mask comprehension, auxiliary, the multi-turn
workflow), derived from the grounding rows exactly as ``make data-veteran`` derives them, with the tiny SAM2.

With ``generalized``, a last file holds two generalized rows of a synthetic gRefCOCO train split (one naming two
objects, one naming nothing), converted with ``python -m data_prep grefcoco`` for the recipe (SAM-R1's rows, or
SAM-Veteran's grounding rows).

The inputs of ``make eval-smoke`` are evaluation rows of synthetic RefCOCOg and ReasonSeg splits (``build_eval_sets``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep import __main__ as data_prep_cli
from data_prep.schema import ROW
from data_prep.synthetic import (
    synthetic_refer_parquet,
    write_grefcoco_dataset,
    write_reasonseg_split,
    write_refer_dataset,
)
from data_prep.veteran import build_auxiliary, build_mask_comprehension, build_workflow
from recipe.task.dataset_rows import Row
from recipe.tiny_vlm import build_tiny_vlm
from reward_server.config import load_preset
from reward_server.engine import SamEngine


@dataclass(frozen=True)
class SmokeInputs:
    """What a smoke run trains on: its parquet files (one per task) and the tiny model's directory."""

    train_files: list[Path]
    model: Path


def generalized_rows(out_dir: Path, recipe: str, seed: int = 0) -> Path:
    """Writes ``<out_dir>/generalized.parquet``: a two-object and a no-target row of a synthetic gRefCOCO train split,
    in that order, converted for ``recipe``.

    Raises:
        RuntimeError: When the conversion fails.
    """
    release = write_grefcoco_dataset(out_dir / "downloads", num_images=5, seed=seed)
    converted, out = out_dir / "grefcoco_train.parquet", out_dir / "generalized.parquet"
    args = ["grefcoco", "--root", str(release.root), "--image-root", str(release.image_root), "--split", "train"]
    args += ["--recipe", recipe, "--out", str(converted), "--workers", "1", "--seed", str(seed)]
    if data_prep_cli.main(args) != 0:
        raise RuntimeError("data_prep grefcoco failed")
    rows = pq.read_table(converted).to_pylist()
    counts = [len(Row(row).ground_truth.objects) for row in rows]
    chosen = [rows[counts.index(2)], rows[counts.index(0)]]
    pq.write_table(pa.Table.from_pylist(chosen, schema=ROW), out)
    return out


def build_smoke_inputs(
    out_dir: Path, recipe: str, prompts: int, seed: int = 0, base: str = "qwen2_5_vl", generalized: bool = False
) -> SmokeInputs:
    """Writes ``recipe``'s smoke inputs under ``out_dir`` (``prompts`` grounding rows; every task derives from them),
    with the tiny model of the ``base`` family (a key of ``recipe.tiny_vlm.TINY_BUILDERS``); ``generalized``
    adds :func:`generalized_rows` as the last file."""
    # Images rotate through train, val and test; 3 per prompt leaves every prompt an image of its own.
    grounding = synthetic_refer_parquet(
        out_dir, out_dir / f"{recipe}_grounding.parquet", recipe, num_images=3 * prompts, limit=prompts, seed=seed
    )
    files = [grounding]
    if recipe == "veteran":
        files += [out_dir / "mask_comprehension.parquet", out_dir / "auxiliary.parquet", out_dir / "workflow.parquet"]
        # Random SAM2 weights give no Good Enough masks: keep every scored row instead of balancing the cases.
        build_mask_comprehension(grounding, files[1], SamEngine(load_preset("tiny_cpu").engine), case_mix="all")
        build_auxiliary(grounding, files[2], seed=seed)
        build_workflow(grounding, files[3])
    if generalized:
        files.append(generalized_rows(out_dir, recipe, seed))
    # Small images (16 tokens each, not 900): on a CPU the padded sequence length sets the cost of every step.
    model = build_tiny_vlm(base, out_dir / f"tiny_{base}", seed=seed, small_images=True)
    return SmokeInputs(files, model)


def build_eval_sets(out_dir: str | Path, seed: int = 0, refer_images: int = 6, reasonseg_images: int = 3) -> Path:
    """Writes the inputs of ``make eval-smoke``: synthetic RefCOCOg test and ReasonSeg val rows in ``<out_dir>/eval``.

    The ReasonSeg split holds ignore regions, so evaluation's 255 labels are exercised too.

    Args:
        out_dir: Where the synthetic downloads and the evaluation rows go.
        seed: Seed of the synthetic images.
        refer_images: RefCOCOg images; every third is a test image, which gives 4 rows (2 objects, 2 sentences each).
        reasonseg_images: ReasonSeg val images, one row each.

    Returns:
        The directory of the evaluation parquet files.

    Raises:
        RuntimeError: When a conversion fails.
    """
    out_dir = Path(out_dir)
    downloads, eval_dir = out_dir / "downloads", out_dir / "eval"
    refer = write_refer_dataset(downloads, "refcocog", num_images=refer_images, seed=seed)
    reasonseg = write_reasonseg_split(downloads, "val", num_images=reasonseg_images, seed=seed)
    refer_rows = ["refer", "--dataset", "refcocog", "--split", "test", "--refer-root", str(refer.refer_root)]
    refer_rows += ["--image-root", str(refer.image_root), "--out", str(eval_dir / "refcocog_test.parquet")]
    reasonseg_rows = ["reasonseg", "--root", str(reasonseg.parent), "--split", "val"]
    reasonseg_rows += ["--out", str(eval_dir / "reasonseg_val.parquet")]
    for args in (refer_rows, reasonseg_rows):
        if data_prep_cli.main([*args, "--workers", "1", "--seed", str(seed)]) != 0:
            raise RuntimeError(f"data_prep {args[0]} failed")
    return eval_dir


def main(argv: list[str] | None = None) -> None:
    """``python -m data_prep.smoke eval-sets OUT``: builds ``make eval-smoke``'s evaluation sets under ``OUT``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("what", choices=["eval-sets"])
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    print(build_eval_sets(args.out), flush=True)


if __name__ == "__main__":
    main()
