"""``make eval-smoke``: every evaluation mode end to end on a CPU, on synthetic evaluation sets, with tiny models.

data_prep converts a synthetic RefCOCOg test split and a synthetic ReasonSeg val split (with ignore regions) into
evaluation rows; the tiny random Qwen2.5-VL (transformers) and the tiny random SAM2 evaluate them in each mode; the
runs' table and visual reports land under ``--out``. The random model's answers rarely parse, so its modes measure
the failure path; ``oracle_box`` measures SAM2 on ground-truth boxes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from data_prep import __main__ as data_prep_cli
from data_prep.synthetic import write_reasonseg_split, write_refer_dataset
from recipe.common.smoke_setup import compose_recipe
from recipe.common.tiny_vlm import build_tiny_qwen2_5_vl
from recipe.evaluate.config import eval_config
from recipe.evaluate.modes import MODES
from recipe.evaluate.runner import evaluate
from recipe.evaluate.summary import markdown_table


def build_eval_sets(out_dir: Path, seed: int = 0) -> Path:
    """Synthetic RefCOCOg test and ReasonSeg val evaluation rows in ``<out_dir>/eval``."""
    downloads, eval_dir = out_dir / "downloads", out_dir / "eval"
    refer = write_refer_dataset(downloads, "refcocog", num_images=6, seed=seed)
    reasonseg = write_reasonseg_split(downloads, "val", num_images=3, seed=seed)
    refer_rows = ["refer", "--dataset", "refcocog", "--split", "test", "--refer-root", str(refer.refer_root)]
    refer_rows += ["--image-root", str(refer.image_root), "--out", str(eval_dir / "refcocog_test.parquet")]
    reasonseg_rows = ["reasonseg", "--root", str(reasonseg.parent), "--split", "val"]
    reasonseg_rows += ["--out", str(eval_dir / "reasonseg_val.parquet")]
    commands = [refer_rows, reasonseg_rows]
    for args in commands:
        if data_prep_cli.main([*args, "--workers", "1", "--seed", str(seed)]) != 0:
            raise RuntimeError(f"data_prep {args[0]} failed")
    return eval_dir


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/eval_smoke", help="where data, the tiny model and the runs go")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    out_dir = Path(args.out).resolve()
    eval_dir = build_eval_sets(out_dir, args.seed)
    model = build_tiny_qwen2_5_vl(out_dir / "tiny_qwen2_5_vl", seed=args.seed)
    summaries = []
    for mode in args.modes:
        overrides = [
            f"mode={mode}",
            "reward_server=tiny_cpu",
            f"model.path={model}",
            "model.backend=transformers",
            f"data.files=[{eval_dir}]",
            f"output_dir={out_dir / 'runs' / mode}",
            f"generation.max_new_tokens={args.max_new_tokens}",
            "generation.batch_size=4",
            "visual.random_samples=4",
            "visual.worst_samples=2",
        ]
        summaries.append(evaluate(eval_config(compose_recipe("evaluate", overrides))))
    table = markdown_table(summaries)
    print(f"\neval smoke: {len(args.modes)} modes in {time.monotonic() - started:.0f} s; reports in {out_dir / 'runs'}")
    print(table, flush=True)
    return table


if __name__ == "__main__":
    main()
