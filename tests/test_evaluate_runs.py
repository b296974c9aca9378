"""Whole evaluation runs: the command line, a killed and restarted run, Ray workers, the smoke run and its report."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

from recipe.evaluate.config import EvalConfig, eval_config
from recipe.evaluate.modes import get_mode
from recipe.evaluate.records import RECORDS_DIR, read_records
from recipe.evaluate.runner import evaluate
from recipe.verl_runtime.compose import compose_recipe
from reward_server.sam2_build import resolve_config

ROOT = Path(__file__).resolve().parents[1]


def cli(*overrides):
    return [sys.executable, "-m", "recipe.evaluate", *overrides]


def oracle_overrides(eval_dir, out_dir, *extra):
    return [
        "mode=oracle_box",
        "reward_server=tiny_cpu",
        f"data.files=[{eval_dir}]",
        f"output_dir={out_dir}",
        "report=false",
        *extra,
    ]


def test_the_config_composes_and_takes_sam2_from_the_reward_server_group(tmp_path):
    cfg = eval_config(compose_recipe("evaluate", ["mode=veteran", "reward_server=tiny_cpu", "model.path=/m"]))
    assert cfg.sam.model == "sam2.1_hiera_t" and cfg.sam.device == "cpu"
    assert cfg.veteran.max_steps == 3 and cfg.generation.repetition_penalty is None
    assert cfg.method_name == "veteran (m)"
    job = subprocess.run(
        cli("mode=baseline", "--cfg", "job"), cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    assert "mode: baseline" in job.stdout and "checkpoint: null" in job.stdout


def test_each_ray_worker_gets_the_gpus_its_tensor_parallel_vllm_shards_over():
    tp2 = ["model.tensor_parallel_size=2", "parallel.workers=4"]
    with pytest.raises(ValueError, match=r"set parallel\.gpus_per_worker=2"):
        eval_config(compose_recipe("evaluate", tp2))
    assert eval_config(compose_recipe("evaluate", [*tp2, "parallel.gpus_per_worker=2"])).parallel.gpus_per_worker == 2
    # One worker runs in this process without Ray: vLLM sees every visible GPU.
    assert eval_config(compose_recipe("evaluate", ["model.tensor_parallel_size=2"])).model.tensor_parallel_size == 2


@pytest.mark.parametrize("mode", ["veteran", "samr1"])
def test_the_answer_budget_covers_the_training_response_length(mode):
    """Evaluation decodes at least as many tokens per turn as the recipe trained its answers with."""
    trained = OmegaConf.load(ROOT / "conf" / f"{mode}.yaml").data.max_response_length
    cfg = eval_config(compose_recipe("evaluate", [f"mode={mode}"]))
    budget = get_mode(mode).decoding(cfg.generation).max_new_tokens
    assert budget >= trained
    assert get_mode(mode).decoding(EvalConfig(mode=mode).generation).max_new_tokens == budget
    explicit = eval_config(compose_recipe("evaluate", [f"mode={mode}", "generation.max_new_tokens=77"]))
    assert get_mode(mode).decoding(explicit.generation).max_new_tokens == 77


def test_eval_presets_compose():
    """``+eval=seg_zero``: Seg-Zero's convention, SAM2 with three masks and the config SAM2 packages for
    ``facebook/sam2-hiera-large`` (SAM 2.0, what Seg-Zero's scripts load); ``large`` stays SAM 2.1."""
    seg_zero = eval_config(compose_recipe("evaluate", ["+eval=seg_zero", "mode=veteran"]))
    assert seg_zero.metrics.convention == "seg_zero" and seg_zero.sam.multimask_output
    assert seg_zero.mode == "veteran" and get_mode("veteran").decoding(seg_zero.generation).max_new_tokens >= 1300
    packaged = Path(str(resources.files("sam2"))).resolve()
    for config, hub_id in (
        (seg_zero.sam.model, "facebook/sam2-hiera-large"),
        ("sam2.1_hiera_l", "facebook/sam2.1-hiera-large"),
    ):
        assert resolve_config(config).resolve() == packaged / HF_MODEL_ID_TO_FILENAMES[hub_id][0]
    default = eval_config(compose_recipe("evaluate", []))
    assert default.sam.model == "sam2.1_hiera_l" and not default.sam.multimask_output
    assert default.metrics.convention == "lisa"
    rec = eval_config(compose_recipe("evaluate", ["+eval=rec"]))
    assert rec.mode == "samr1" and [Path(f).stem for f in rec.data.files] == ["reasonseg_val", "reasonseg_test"]
    refine = eval_config(compose_recipe("evaluate", ["+eval=refine_5"]))
    assert refine.mode == "veteran" and refine.veteran.max_steps == 5  # SAM-Veteran's Table 9
    with pytest.raises(ValueError, match="unknown metrics convention"):
        eval_config(compose_recipe("evaluate", ["metrics.convention=seg-zero"]))


def test_the_command_line_explains_missing_data_and_models(tmp_path):
    missing = subprocess.run(
        cli(*oracle_overrides(tmp_path / "nowhere", tmp_path / "out")), cwd=ROOT, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def _complete_lines(out_dir):
    lines = []
    for path in sorted((out_dir / RECORDS_DIR).glob("*.jsonl")):
        lines += [line for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]
    return lines


def test_a_killed_run_resumes_without_recomputing_or_double_counting(eval_sets, tmp_path):
    out_dir = tmp_path / "run"
    # SAM2 at 1024 px on a CPU takes about a second per image: the kill lands mid-run.
    command = cli(
        *oracle_overrides(eval_sets, out_dir, "reward_server.engine.image_size=1024", "generation.batch_size=1")
    )
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not _complete_lines(out_dir) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = _complete_lines(out_dir)
    total = 11
    assert 1 <= len(before) < total, "the kill must land after the first record and before the last"

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"{total} samples, {len(before)} done earlier, {total - len(before)} to go" in second.stdout
    after = _complete_lines(out_dir)
    assert after[: len(before)] == before, "finished records are kept as they were"
    uids = [json.loads(line)["uid"] for line in after]
    assert len(uids) == len(set(uids)) == total
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["n"] == total and summary["run_samples"] == total - len(before)


@pytest.fixture()
def local_ray():
    import ray

    yield
    ray.shutdown()


def test_ray_workers_split_the_samples_and_agree_with_one_process(eval_sets, tmp_path, local_ray):
    def run(out_dir, *extra):
        # One sample per batch: SAM2's float sums then do not depend on which samples share a batch.
        overrides = oracle_overrides(eval_sets, out_dir, "generation.batch_size=1", *extra)
        return evaluate(eval_config(compose_recipe("evaluate", overrides)))

    parallel = run(
        tmp_path / "parallel", "parallel.workers=2", "parallel.gpus_per_worker=0", "parallel.cpus_per_worker=1"
    )
    # A Ray worker with one CPU runs torch on one thread: so does the single run, for the same float sums.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run(tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    files = sorted(path.name for path in (tmp_path / "parallel" / RECORDS_DIR).glob("*.jsonl"))
    assert files == ["worker-000.jsonl", "worker-001.jsonl"]
    assert parallel["datasets"] == single["datasets"]
    a, b = read_records(tmp_path / "parallel"), read_records(tmp_path / "single")
    assert {uid: (r["intersection"], r["union"]) for uid, r in a.items()} == {
        uid: (r["intersection"], r["union"]) for uid, r in b.items()
    }


def lisa_ious(records: list[dict]) -> tuple[float, float]:
    """LISA's gIoU (an empty union scores 1) and cIoU (sum I / sum U) from records' per-sample counts."""
    ious = [r["intersection"] / r["union"] if r["union"] else 1.0 for r in records]
    return sum(ious) / len(ious), sum(r["intersection"] for r in records) / sum(r["union"] for r in records)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_eval_smoke_runs_every_mode_and_writes_a_report_that_renders(tmp_path):
    from data_prep.smoke import build_eval_sets
    from recipe.evaluate.modes import MODES
    from recipe.evaluate.smoke import main

    table = main(["--data", str(build_eval_sets(tmp_path)), "--out", str(tmp_path)])
    header = table.splitlines()[0].split(" | ")
    for mode in MODES:
        # The first row of the mode is the IoU table's; the box-accuracy table below repeats the method.
        row = next(line.split(" | ") for line in table.splitlines() if line.startswith(f"| {mode} "))
        records = list(read_records(tmp_path / "runs" / mode).values())
        assert len(records) == 11 and {r["dataset"] for r in records} == {"reasonseg_val", "refcocog_test"}
        assert row[1] == "lisa"
        for dataset, label in (("reasonseg_val", "ReasonSeg val"), ("refcocog_test", "RefCOCOg test")):
            giou, ciou = lisa_ious([r for r in records if r["dataset"] == dataset])
            assert float(row[header.index(f"{label} gIoU")]) == pytest.approx(100 * giou, abs=0.05), (mode, dataset)
            assert float(row[header.index(f"{label} cIoU")]) == pytest.approx(100 * ciou, abs=0.05), (mode, dataset)
    veteran = (tmp_path / "runs" / "veteran" / "table.md").read_text()
    assert "| Dataset | Step |" in veteran, "veteran mode reports IoU and termination per step"

    page = tmp_path / "runs" / "oracle_box" / "report" / "index.html"
    text = page.read_text()
    panels = re.findall(r'src="(panels/[^"]+)"', text)
    assert panels and all((page.parent / panel).is_file() for panel in panels)
    assert "Worst samples" in text and "Random samples" in text and "<table>" in text
    panel = np.asarray(Image.open(page.parent / panels[0]))
    assert panel.shape[1] > panel.shape[0], "ground truth and the step side by side"

    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt install chromium): the page was checked without rendering")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
            *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--window-size=1200,1600",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1600, 1200)
    assert (pixels < 200).any(axis=2).mean() > 0.05, "the page shows its tables and panels, not a blank page"
