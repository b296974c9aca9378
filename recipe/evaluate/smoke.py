"""``make eval-smoke``: every evaluation mode end to end on a CPU, on prepared evaluation sets, with tiny models.

The evaluation sets come from ``--data`` (``make eval-smoke`` builds synthetic ones first with
``data_prep.smoke.build_eval_sets``: a RefCOCOg test split and a ReasonSeg val split with ignore regions); the tiny
random Qwen2.5-VL (transformers) and the tiny random SAM2 evaluate them in each mode; the runs' table and visual
reports land under ``--out``. The random model's answers rarely parse, so its modes measure the failure path;
``oracle_box`` measures SAM2 on ground-truth boxes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recipe.evaluate.config import eval_config
from recipe.evaluate.modes import MODES
from recipe.evaluate.runner import evaluate
from recipe.evaluate.summary import markdown_table
from recipe.tiny_vlm import build_tiny_qwen2_5_vl
from recipe.verl_runtime.compose import compose_recipe


def main(argv: list[str] | None = None) -> str:
    """Evaluates ``--data`` in every chosen mode and returns the gIoU/cIoU table (also printed)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="directory of evaluation parquet files")
    parser.add_argument("--out", default="outputs/eval_smoke", help="where the tiny model and the runs go")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny model's weights")
    args = parser.parse_args(argv)
    started = time.monotonic()
    out_dir, eval_dir = Path(args.out).resolve(), Path(args.data).resolve()
    if not eval_dir.is_dir():
        # Checked before the tiny model is built, so a wrong path fails at once.
        parser.error(f"--data {eval_dir} is not a directory (make eval-smoke builds it with data_prep.smoke)")
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
