"""``python -m recipe.evaluate.table OUTPUT_DIR ...``: one markdown table of several runs' ``summary.json``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from recipe.evaluate.summary import markdown_table


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="evaluation output directories (each with summary.json)")
    args = parser.parse_args(argv)
    summaries = [json.loads((Path(run) / "summary.json").read_text()) for run in args.runs]
    table = markdown_table(summaries)
    print(table)
    return table


if __name__ == "__main__":
    main()
