"""SAM-Veteran's derived sets: mask comprehension (balanced cases) and auxiliary (corrupted masks, centres)."""

from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep.synthetic import synthetic_refer_parquet
from data_prep.veteran import build_auxiliary, build_mask_comprehension
from reward_server.masks import decode_rle, edge_excluded_iou

from support.fake_sam import GoodEveryNth

pytestmark = pytest.mark.slow


@pytest.fixture
def grounding(tmp_path: Path) -> Path:
    return synthetic_refer_parquet(tmp_path, tmp_path / "grounding.parquet", "veteran", num_images=9)


def test_mask_comprehension_is_balanced_and_stores_the_sam_mask(grounding, tmp_path):
    out = tmp_path / "mask.parquet"
    report = build_mask_comprehension(grounding, out, GoodEveryNth(4), seed=0)
    rows = pq.read_table(out).to_pylist()
    cases = [row["reward_model"]["ground_truth"]["case"] for row in rows]
    assert cases.count("good_enough") == cases.count("need_refinement") == 3  # 12 rows, every 4th good -> 3 + 9
    assert report.rows == 6
    for row in rows:
        truth = row["reward_model"]["ground_truth"]
        init, gt = decode_rle(truth["init_mask"]), decode_rle(truth["mask"])
        assert truth["init_edge_iou"] == edge_excluded_iou(init, gt)
        assert (truth["case"] == "good_enough") == (truth["init_edge_iou"] == 1.0)
        assert row["agent_name"] == "veteran_mask_comprehension"
        assert row["prompt"][0]["content"].startswith("<image>Please point out any errors in the green")
    again = tmp_path / "again.parquet"
    build_mask_comprehension(grounding, again, GoodEveryNth(4), seed=0)
    assert pq.read_table(again).to_pylist() == rows


def test_unbalanced_mask_comprehension_keeps_every_scored_row(grounding, tmp_path):
    report = build_mask_comprehension(grounding, tmp_path / "all.parquet", GoodEveryNth(4), balanced=False)
    cases = [row["reward_model"]["ground_truth"]["case"] for row in pq.read_table(tmp_path / "all.parquet").to_pylist()]
    assert report.rows == 12 and cases.count("good_enough") == 3 and cases.count("need_refinement") == 9


def test_auxiliary_rows_hold_corruptions_and_region_centres(grounding, tmp_path):
    out = tmp_path / "aux.parquet"
    build_auxiliary(grounding, out, seed=3)
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == pq.read_metadata(grounding).num_rows
    for row in rows:
        truth = row["reward_model"]["ground_truth"]
        gt, corrupted = decode_rle(truth["mask"]), decode_rle(truth["init_mask"])
        expected = gt.copy()
        for name, present in (
            ("false_positive", truth["case"] in ("fp", "both")),
            ("false_negative", truth["case"] in ("fn", "both")),
        ):
            region_entry = truth[name]
            assert (region_entry is not None) == present
            if region_entry is None:
                continue
            region = decode_rle(region_entry["mask"])
            x, y = region_entry["center"]
            assert region[round(y), round(x)]  # the centre lies in its region
            expected = expected | region if name == "false_positive" else expected & ~region
        assert np.array_equal(corrupted, expected)
        assert row["agent_name"] == "veteran_auxiliary"


def test_task_files_concatenate_as_verl_loads_them(grounding, tmp_path):
    build_mask_comprehension(grounding, tmp_path / "mask.parquet", GoodEveryNth(2))
    build_auxiliary(grounding, tmp_path / "aux.parquet")
    files = [str(grounding), str(tmp_path / "mask.parquet"), str(tmp_path / "aux.parquet")]
    parts = [datasets.load_dataset("parquet", data_files=path, split="train") for path in files]
    merged = datasets.concatenate_datasets(parts)
    assert len(merged) == sum(len(part) for part in parts)
    assert {row["extra_info"]["task"] for row in merged} == {"grounding", "mask_comprehension", "auxiliary"}


def test_workflow_rows_are_grounding_rows_for_the_workflow_loop(grounding, tmp_path):
    from data_prep.veteran import build_workflow

    build_workflow(grounding, tmp_path / "workflow.parquet")
    rows, source = pq.read_table(tmp_path / "workflow.parquet").to_pylist(), pq.read_table(grounding).to_pylist()
    assert [r["agent_name"] for r in rows] == ["veteran_workflow"] * len(source)
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in source]
