"""``make bench-eval`` on a few samples: one parsable line; the batched evaluator agrees with the per-sample loop."""

import json
import re

import numpy as np

from bench.eval import main, same_metrics
from recipe.task.metrics import SegMetrics

LINE = re.compile(
    r"bench-eval: samples=(\d+) loop_s=(\d+\.\d\d) batched_s=(\d+\.\d\d) speedup=(\d+\.\d\d) same_metrics=(true|false)"
)


def test_the_batched_evaluator_scores_like_the_loop_on_every_sample(tmp_path, capsys):
    line = main(["--samples", "5", "--batch-size", "4", "--small-images", "--out", str(tmp_path)])
    assert capsys.readouterr().out.splitlines() == [line], "stdout carries the benchmark's line alone"
    match = LINE.fullmatch(line)
    assert match, line
    samples, loop_s, batched_s, speedup, same = match.groups()
    assert samples == "5" and same == "true"
    assert float(loop_s) > 0 and float(batched_s) > 0
    assert abs(float(speedup) - float(loop_s) / float(batched_s)) < 0.01 + 0.01 * float(speedup)
    # The forced answers parse, so SAM2 segmented every sample (else both runs would agree on failures alone).
    records = [
        json.loads(row)
        for path in (tmp_path / "run" / "records").glob("*.jsonl")
        for row in path.read_text().splitlines()
    ]
    assert len(records) == 5 and not any(record["failed"] for record in records)


def _metrics(flipped: int) -> dict:
    """One dataset of two samples whose targets are 2000 and 1000 pixels, predicted exactly but for ``flipped``."""
    metrics = SegMetrics()
    for rows in (40, 20):
        gt = np.zeros((100, 100), np.uint8)
        gt[:rows, :50] = 1
        pred = gt.copy()
        pred[-1, pred.shape[1] - flipped :] = 1  # pixels of the last row, outside the target, turned on
        metrics.update(pred, gt)
    return {"d": metrics.summary()}


def test_metrics_agree_when_masks_differ_by_rounding_at_the_threshold_only():
    areas = {"d": [2000, 1000]}
    assert same_metrics(_metrics(0), _metrics(0), areas)
    assert same_metrics(_metrics(4), _metrics(0), areas), "4 pixels per mask is the rounding allowance"
    assert not same_metrics(_metrics(40), _metrics(0), areas)
    assert not same_metrics(_metrics(0), {"d": {**_metrics(0)["d"], "n": 3}}, areas)
    assert not same_metrics(_metrics(0), {}, areas)
