"""`make smoke` (the SAM-R1 pipeline on a CPU) runs end to end and reports sane numbers."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_samr1_smoke_run(tmp_path):
    command = [sys.executable, "-m", "recipe.samr1.smoke", "--out", str(tmp_path), "--prompts", "2", "--rollouts", "3"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = "\n".join(line for line in done.stdout.splitlines() if line.startswith("smoke:"))
    assert "2 prompts x 3 rollouts" in summary
    # The random tiny model never writes the tags: format penalties, SAM2 not called; the oracle's answers parse.
    assert "tiny -2.00" in summary and "oracle 2." in summary and "'no_answer': 2" in summary
    requests, encodes = map(int, re.search(r"SAM2 pool (\d+) requests, (\d+) encodes", summary).groups())
    assert requests == 2 * 2 and 1 <= encodes <= 2  # only the oracle's 2 rollouts per prompt reach SAM2
    loss, after = map(float, re.search(r"samr1 loss (-?[\d.]+) -> (-?[\d.]+)", summary).groups())
    assert loss != after  # the AdamW step moved the policy
    assert (tmp_path / "samr1_smoke.parquet").is_file() and (tmp_path / "tiny_qwen2_5_vl" / "config.json").is_file()


def test_veteran_smoke_run(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "recipe.veteran.smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {line.split(":")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("smoke/veteran:")}
    for task in ("grounding", "mask_comprehension", "auxiliary"):
        assert "tiny Qwen2.5-VL 0.00 (failure no_answer)" in lines[task]  # random weights never write the tags
    assert "box 2.00" in lines["grounding"]  # the scripted answer is the GT box
    assert re.search(r"scripted \d\.\d\d \(decision 2\.00", lines["auxiliary"])  # the oracle decides right
    assert re.search(r"workflow \d steps, termination (stop|max_steps)", done.stdout)
