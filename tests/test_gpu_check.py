"""``make gpu-check ARGS=--quick``: the CPU dry run of both parts, which runs everything but vLLM and the GPU tests.

The training part composes both recipes' ``+smoke=gpu`` commands and puts them through preflight's configuration
checks; the bare part runs in a process of its own that refuses to import vLLM, Ray and verl, as a bare GPU machine
would fail to, and must still pass its parity checks and print its throughput table.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check import BARE_REFUSES, refuse_imports
from recipe.smoke import RECIPES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_the_quick_dry_run_passes_both_parts(tmp_path):
    argv = [sys.executable, "-m", "bench.gpu_check", "--quick", f"--out={tmp_path}", "--budget-s=600"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    out = result.stdout
    assert result.returncode == 0, (out[-4000:], result.stderr[-4000:])
    for recipe in RECIPES:
        assert f"train {recipe}: not launched (--quick: vLLM needs a GPU); composes, preflight's config" in out
    parity = [line for line in out.splitlines() if line.startswith("| SAM2 ") or line.startswith("| policy ")]
    assert len(parity) == 9, out
    assert not any(line.endswith("| FAILED |") for line in parity), parity
    assert "| eager | 1 |" in out and "| compiled (eager) | 1 |" in out
    assert "bare part: passed" in out and "gpu-check: passed" in out


def test_the_bare_part_refuses_what_a_bare_machine_lacks():
    code = f"from bench.gpu_check import refuse_imports; refuse_imports({list(BARE_REFUSES)!r}); import ray"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "ModuleNotFoundError: import of ray halted" in result.stderr
    with pytest.raises(RuntimeError, match="pytest is imported already"):
        refuse_imports(["pytest"])
