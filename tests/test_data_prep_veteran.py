"""SAM-Veteran's data: mask comprehension (the paper's case mix, the shown mask's logits), auxiliary (corrupted masks,
retries, realised rates), and the RefCOCOg id filter."""

import pickle
from pathlib import Path

import cv2
import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import __main__ as cli
from data_prep import corruption as corruption_module
from data_prep.corruption import ATTEMPTS, corrupt_mask
from data_prep.refer import read_id_file, read_refer
from data_prep.schema import GROUND_TRUTH, ROW
from data_prep.synthetic import synthetic_refer_parquet, write_refer_dataset
from data_prep.veteran import build_auxiliary, build_mask_comprehension, case_counts
from recipe.task.stored_logits import decode_logits
from reward_server.masks import decode_rle, edge_excluded_iou

from support.fake_sam import GoodEveryNth

pytestmark = pytest.mark.slow

# A.4: "600 samples with IoU = 1 are treated as Good Enough, while around 700 samples with IoU < 0.9 are
# categorized as Need Refinement" (of the 9,000 grounding samples).
PAPER_GOOD_ENOUGH, PAPER_NEED_REFINEMENT = 600, 700


@pytest.fixture(scope="module")
def grounding(tmp_path_factory) -> Path:
    """24 grounding rows; ``GoodEveryNth(4)`` makes 6 of them Good Enough and 18 Need Refinement."""
    root = tmp_path_factory.mktemp("veteran_grounding")
    return synthetic_refer_parquet(root, root / "grounding.parquet", "veteran", num_images=18)


def cases_of(path: Path) -> list[str]:
    return [row["reward_model"]["ground_truth"]["case"] for row in pq.read_table(path).to_pylist()]


def test_paper_case_mix_on_the_9k_set():
    """All 600 Good Enough rows and 700 of the (many more) Need Refinement ones; twice as many keeps the ratio."""
    assert case_counts((600, 5200), (600, 700), None) == (PAPER_GOOD_ENOUGH, PAPER_NEED_REFINEMENT)
    assert case_counts((1200, 1400), (600, 700), None) == (1200, 1400)
    assert case_counts((600, 5200), (600, 700), 350) == (300, 350)
    assert case_counts((600, 5200), (1, 1), None) == (600, 600)


def test_mask_comprehension_keeps_the_paper_proportions_and_the_shown_masks_logits(grounding, tmp_path):
    out = tmp_path / "mask.parquet"
    report = build_mask_comprehension(grounding, out, GoodEveryNth(4), seed=0)
    rows = pq.read_table(out).to_pylist()
    cases = cases_of(out)
    # 6 Good Enough available: the paper's 600:700, scaled by 1/100.
    assert (cases.count("good_enough"), cases.count("need_refinement")) == (6, 7) and report.rows == 13
    assert "kept 6 Good Enough of 6, 7 Need Refinement of 18" in report.summary()
    for row in rows:
        truth = row["reward_model"]["ground_truth"]
        init, gt = decode_rle(truth["init_mask"]), decode_rle(truth["mask"])
        assert truth["init_edge_iou"] == edge_excluded_iou(init, gt)
        assert (truth["case"] == "good_enough") == (truth["init_edge_iou"] == 1.0)
        # The fake's logits of the same call: +1 where it returned the GT, -1 where it returned nothing.
        logits = decode_logits(truth["init_logits"])
        assert logits.shape == (256, 256) and logits.dtype == np.float16
        assert (logits > 0).all() == init.any() and (logits < 0).all() == (not init.any())
        assert row["agent_name"] == "veteran_mask_comprehension"
        assert row["prompt"][0]["content"].startswith("<image>Please point out any errors in the green")
    again = tmp_path / "again.parquet"
    build_mask_comprehension(grounding, again, GoodEveryNth(4), seed=0)
    assert pq.read_table(again).to_pylist() == rows


@pytest.mark.parametrize(("case_mix", "expected"), [("equal", (6, 6)), ("all", (6, 18))])
def test_exact_balance_and_every_row_are_flags(grounding, tmp_path, case_mix, expected):
    out = tmp_path / f"{case_mix}.parquet"
    build_mask_comprehension(grounding, out, GoodEveryNth(4), case_mix=case_mix)
    cases = cases_of(out)
    assert (cases.count("good_enough"), cases.count("need_refinement")) == expected


def test_case_mix_is_a_cli_flag(grounding, tmp_path, monkeypatch):
    from data_prep import veteran

    monkeypatch.setattr(veteran, "build_engine", lambda config: GoodEveryNth(4))
    outs = {name: tmp_path / f"{name}.parquet" for name in ("mask", "aux")}
    args = ["veteran", "--grounding", str(grounding), "--out-mask", str(outs["mask"]), "--out-aux", str(outs["aux"])]
    assert cli.main([*args, "--sam", "tiny_cpu", "--case-mix", "equal"]) == 0
    assert sorted(cases_of(outs["mask"])) == ["good_enough"] * 6 + ["need_refinement"] * 6
    with pytest.raises(SystemExit):
        cli.main([*args, "--case-mix", "half"])


def test_grounding_rows_of_an_older_schema_are_refused_with_the_rebuild_command(grounding, tmp_path):
    table = pq.read_table(grounding)
    old_truth = pa.struct([field for field in GROUND_TRUTH if field.name != "init_logits"])
    old_reward = pa.struct([("style", pa.string()), ("ground_truth", old_truth)])
    old_row = pa.schema([pa.field(f.name, old_reward) if f.name == "reward_model" else f for f in ROW])
    rows = table.to_pylist()
    for row in rows:
        del row["reward_model"]["ground_truth"]["init_logits"]
    old = tmp_path / "old_grounding.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=old_row), old)
    with pytest.raises(ValueError, match=r"lacks \['init_logits'\].*make data`, then rerun `make data-veteran"):
        build_mask_comprehension(old, tmp_path / "mask.parquet", GoodEveryNth(4))
    with pytest.raises(ValueError, match="make data-veteran"):
        build_auxiliary(old, tmp_path / "aux.parquet")


def test_auxiliary_rows_hold_corruptions_and_region_centres(grounding, tmp_path):
    out = tmp_path / "aux.parquet"
    report = build_auxiliary(grounding, out, seed=3)
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
    # The closing report's realised rates, recounted from the written rows.
    summary = report.summary()
    for kind, region in (("inclusion", "false_positive"), ("exclusion", "false_negative")):
        placed = sum(row["reward_model"]["ground_truth"][region] is not None for row in rows)
        assert f"{kind} in {placed} of {len(rows)} rows ({placed / len(rows):.1%})" in summary
    assert summary.count("0 drawn but not placed") == 2  # the synthetic objects are large enough for every error


def ellipse(shape=(840, 840), center=(420, 400), axes=(220, 160)) -> np.ndarray:
    gt = np.zeros(shape, np.uint8)
    cv2.ellipse(gt, center, axes, 15, 0, 360, 1, -1)
    return gt.astype(bool)


def test_a_corruption_whose_first_polygons_all_fail_is_retried_with_another_seed(monkeypatch):
    real_fill, calls = corruption_module.fill_polygon, []

    def failing_first_try(points, shape):
        calls.append(points)
        return np.zeros(shape, bool) if len(calls) <= ATTEMPTS else real_fill(points, shape)

    monkeypatch.setattr(corruption_module, "fill_polygon", failing_first_try)
    gt = ellipse()
    corruption = corrupt_mask(gt, np.random.default_rng(0), p_include=0.0, p_exclude=1.0)
    assert corruption.retried == ("exclusion",) and corruption.not_placed == ()
    fn = corruption.false_negative
    assert fn is not None and fn.any() and (fn <= gt).all() and fn.sum() <= 0.5 * gt.sum()
    assert np.array_equal(corruption.mask, gt & ~fn) and corruption.case == "fn"
    assert len(calls) > ATTEMPTS  # a second try drew new polygons


def test_an_object_no_exclusion_fits_is_reported_not_silently_changed():
    """A 10x10 object: an exclusion needs at least 64 pixels but may remove at most half (50)."""
    gt = np.zeros((840, 840), bool)
    gt[400:410, 400:410] = True
    corruption = corrupt_mask(gt, np.random.default_rng(0), p_include=0.0, p_exclude=1.0)
    assert corruption.false_negative is None and corruption.not_placed == ("exclusion",)
    assert corruption.retried == ("exclusion",) and np.array_equal(corruption.mask, gt)


def test_task_files_concatenate_as_verl_loads_them(grounding, tmp_path):
    build_mask_comprehension(grounding, tmp_path / "mask.parquet", GoodEveryNth(2))
    build_auxiliary(grounding, tmp_path / "aux.parquet")
    files = [str(grounding), str(tmp_path / "mask.parquet"), str(tmp_path / "aux.parquet")]
    parts = [datasets.load_dataset("parquet", data_files=path, split="train") for path in files]
    merged = datasets.concatenate_datasets(parts)
    assert len(merged) == sum(len(part) for part in parts)
    assert {row["extra_info"]["task"] for row in merged} == {"grounding", "mask_comprehension", "auxiliary"}
    stored = next(row for row in merged if row["extra_info"]["task"] == "mask_comprehension")
    assert decode_logits(stored["reward_model"]["ground_truth"]["init_logits"]).shape == (256, 256)


def test_workflow_rows_are_grounding_rows_for_the_workflow_loop(grounding, tmp_path):
    from data_prep.veteran import build_workflow

    build_workflow(grounding, tmp_path / "workflow.parquet")
    rows, source = pq.read_table(tmp_path / "workflow.parquet").to_pylist(), pq.read_table(grounding).to_pylist()
    assert [r["agent_name"] for r in rows] == ["veteran_workflow"] * len(source)
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in source]


@pytest.fixture(scope="module")
def refer(tmp_path_factory):
    return write_refer_dataset(tmp_path_factory.mktemp("refer_ids"), "refcocog", num_images=9)


def train_refs(refer) -> list[dict]:
    with open(refer.refer_root / "refcocog" / "refs(umd).p", "rb") as handle:
        return [ref for ref in pickle.load(handle) if ref["split"] == "train"]


def test_an_id_file_selects_refcocog_refs_by_ref_id(refer, tmp_path):
    refs = train_refs(refer)
    chosen = refs[::2]
    missing = max(ref["ref_id"] for ref in refs) + 1000
    ids = tmp_path / "ids.txt"
    ids.write_text("# Seg-Zero's subset\n" + "".join(f"{ref['ref_id']}\n" for ref in chosen) + f"\n{missing}  # gone\n")
    samples, skipped = read_refer(refer.refer_root, refer.image_root, "refcocog", "train", read_id_file(ids))
    expected = sorted((ref["ref_id"], s["sent_id"]) for ref in chosen for s in ref["sentences"])
    assert sorted((s.ids["ref_id"], s.ids["sent_id"]) for s in samples) == expected
    assert [(s.key, s.reason) for s in skipped if str(missing) in s.key] == [
        (f"refcocog/train/ref{missing}", "ref_id listed in the id file but not in refcocog train")
    ]
    out = tmp_path / "grounding.parquet"
    args = ["refer", "--dataset", "refcocog", "--split", "train", "--recipe", "veteran", "--workers", "1"]
    args += ["--refer-root", str(refer.refer_root), "--image-root", str(refer.image_root), "--out", str(out)]
    assert cli.main([*args, "--ids", str(ids)]) == 0
    rows = pq.read_table(out).to_pylist()
    assert sorted((r["extra_info"]["ref_id"], r["extra_info"]["sent_id"]) for r in rows) == expected


def test_a_malformed_id_file_names_its_line(refer, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("12\nref 13\n")
    with pytest.raises(ValueError, match=r"ids.txt:2: expected one integer ref_id per line"):
        read_id_file(ids)
    args = ["refer", "--dataset", "refcocog", "--split", "train", "--refer-root", str(refer.refer_root)]
    args += ["--image-root", str(refer.image_root), "--out", str(tmp_path / "x.parquet"), "--ids", str(ids)]
    assert cli.main(args) == 2
