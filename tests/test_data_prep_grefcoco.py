"""Generalized rows (several objects or none): ``python -m data_prep grefcoco`` on a synthetic release in the real
format, and ``data_prep custom`` with ``masks``. Masks are checked against pycocotools, decoding each annotation as
gRefCOCO's ``grefer.py`` does (``getMask``) and merging as its ``getMaskByRef(merge=True)`` does (sum, clip to 1)."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data_prep import __main__ as cli
from data_prep.grefcoco import read_grefcoco
from data_prep.synthetic import write_grefcoco_dataset
from recipe.task.dataset_rows import Row
from recipe.task.prompts import GROUNDING_OBJECTS_PROMPT, SAMR1_OBJECTS_PROMPT
from reward_server.masks import MODEL_SIZE, decode_rle, mask_to_box, original_to_model, resize_mask


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("grefcoco")
    data = write_grefcoco_dataset(root, num_images=8)
    instances = json.loads((data.root / "instances.json").read_text())
    return {"data": data, "instances": instances, "refs": json.loads((data.root / "grefs(unc).json").read_text())}


def grefer_mask(annotation: dict, image: dict) -> np.ndarray:
    """``grefer.py``'s ``getMask``: polygons through ``frPyObjects``, RLE as given, the parts summed."""
    decoded = mask_utils.decode(mask_utils.frPyObjects(annotation["segmentation"], image["height"], image["width"]))
    return (decoded.sum(axis=2) if decoded.ndim == 3 else decoded).astype(np.uint8)


def grefer_merged(ref: dict, instances: dict) -> np.ndarray:
    """``getMaskByRef(ref, merge=True)``: zeros for ``[-1]``, else the non-crowd masks summed and clipped to 1."""
    image = next(i for i in instances["images"] if i["id"] == ref["image_id"])
    if ref["ann_id"] == [-1]:
        return np.zeros((image["height"], image["width"]), np.uint8)
    annotations = [a for a in instances["annotations"] if a["id"] in ref["ann_id"] and not a["iscrowd"]]
    merged = sum(grefer_mask(a, image) for a in annotations)
    merged[merged > 1] = 1
    return merged


def build(release: dict, split: str, out: Path, recipe: str = "samr1") -> list[Row]:
    data = release["data"]
    args = ["grefcoco", "--root", str(data.root), "--image-root", str(data.image_root), "--split", split]
    assert cli.main([*args, "--out", str(out), "--workers", "1", "--recipe", recipe]) == 0
    return [Row(row) for row in pq.read_table(out).to_pylist()]


@pytest.mark.parametrize(("split", "recipe"), [("train", "samr1"), ("val", "veteran"), ("testA", "samr1")])
def test_rows_hold_every_object_and_their_union_as_grefer_reads_them(release, tmp_path, split, recipe):
    rows = build(release, split, tmp_path / f"{split}.parquet", recipe)
    refs = {ref["ref_id"]: ref for ref in release["refs"] if ref["split"] == split}
    assert len(rows) == len(refs) == 6
    kinds = set()
    for row in rows:
        ref = refs[row.extra_info.ref_id]
        truth = row.ground_truth
        merged = grefer_merged(ref, release["instances"])
        assert np.array_equal(decode_rle(truth.orig_mask), merged == 1)
        assert np.array_equal(decode_rle(truth.mask), resize_mask(merged == 1, (MODEL_SIZE, MODEL_SIZE)))
        image = next(i for i in release["instances"]["images"] if i["id"] == ref["image_id"])
        annotations = [a for a in release["instances"]["annotations"] if a["id"] in ref["ann_id"] and not a["iscrowd"]]
        assert truth.generalized and len(truth.objects) == len(annotations)
        for target, annotation in zip(truth.objects, annotations, strict=True):
            own = grefer_mask(annotation, image).astype(bool)
            assert np.array_equal(decode_rle(target.mask), resize_mask(own, (MODEL_SIZE, MODEL_SIZE)))
            assert target.box == pytest.approx(original_to_model(mask_to_box(own), own.shape))
        template = SAMR1_OBJECTS_PROMPT if recipe == "samr1" else GROUNDING_OBJECTS_PROMPT
        assert row.prompt[0]["content"] == "<image>" + template.replace("{Question}", row.extra_info.question)
        assert row.data_source == f"grefcoco_{split}"
        kinds.add(len(truth.objects))
    assert kinds == {0, 1, 2}  # a no-target, a one-object and a two-object expression in every split


def test_a_no_target_training_row_is_kept_with_an_empty_target(release, tmp_path):
    rows = build(release, "train", tmp_path / "train.parquet")
    empty = [row for row in rows if row.ground_truth.objects == []]
    assert empty and all(row.ground_truth.box is None for row in empty)
    assert all(not decode_rle(row.ground_truth.mask).any() for row in empty)
    assert all(row.orig_image is None for row in rows)  # training rows keep no original image


def test_crowd_annotations_are_left_out_as_grefer_leaves_them(release):
    samples, _ = read_grefcoco(release["data"].root, release["data"].image_root, "train")
    first = next(s for s in samples if s.ids["image_id"] == 2000 and "and" in s.question)
    assert len(first.objects) == 1  # the pair's second shape is a crowd annotation


def test_bad_refs_are_skipped_with_their_reason_and_bad_files_refused(release, tmp_path):
    data = release["data"]
    root = tmp_path / "broken"
    root.mkdir()
    (root / "instances.json").write_text(json.dumps(release["instances"]))
    refs = [dict(ref) for ref in release["refs"] if ref["split"] == "train"]
    refs[0]["ann_id"] = [-1, refs[1]["ann_id"][0]]
    refs[1]["ann_id"] = [123456789]
    refs[2]["image_id"] = 4242
    refs[3]["sentences"] = []
    (root / "grefs(unc).json").write_text(json.dumps(refs))
    samples, skipped = read_grefcoco(root, data.image_root, "train")
    reasons = sorted(skip.reason.split(" ")[0] + " " + skip.reason.split(" ")[-1] for skip in skipped)
    assert len(skipped) == 4 and len(samples) == len(refs) - 4, reasons
    with pytest.raises(ValueError, match="grefcoco has splits"):
        read_grefcoco(root, data.image_root, "test")
    with pytest.raises(ValueError, match=r"missing .*instances\.json"):
        read_grefcoco(tmp_path, data.image_root, "train")


def test_custom_masks_make_generalized_rows_and_bad_ones_are_skipped(tmp_path):
    image = np.zeros((60, 80, 3), np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    left, right = [[5, 5, 30, 5, 30, 40, 5, 40]], [[45, 10, 75, 10, 75, 50, 45, 50]]
    records = [
        {"image": "a.png", "question": "both boxes", "masks": [left, right]},
        {"image": "a.png", "question": "the circle", "masks": []},
        {"image": "a.png", "question": "the left box", "mask": left},
        {"image": "a.png", "question": "two fields", "mask": left, "masks": [right]},
        {"image": "a.png", "question": "an empty object", "masks": [left, []]},
        {"image": "a.png", "question": "not a list", "masks": {"size": [60, 80], "counts": "x"}},
    ]
    file = tmp_path / "mine.jsonl"
    file.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = tmp_path / "train.parquet"
    assert cli.main(["custom", "--file", str(file), "--split", "train", "--out", str(out), "--workers", "1"]) == 0
    rows = [Row(row) for row in pq.read_table(out).to_pylist()]
    assert [len(row.ground_truth.objects or []) for row in rows] == [2, 0, 0]
    assert [row.ground_truth.generalized for row in rows] == [True, True, False]
    union = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(left + right, 60, 80))).astype(bool)
    assert np.array_equal(decode_rle(rows[0].ground_truth.orig_mask), union)
    report = json.loads((tmp_path / "train.report.json").read_text())
    reasons = " | ".join(item["reason"] for item in report["skipped"])
    assert "exactly one of 'mask'" in reasons and "masks[2] is empty" in reasons and "expected a list" in reasons


def test_veteran_task_sets_from_generalized_rows(release, tmp_path):
    """Mask comprehension refines one object's SAM2 mask: generalized rows are skipped with the reason. The auxiliary
    task corrupts the union (a no-target row has none to corrupt); the workflow takes every row, objects kept."""
    from data_prep.veteran import (
        GENERALIZED_MASK_COMPREHENSION,
        build_auxiliary,
        build_mask_comprehension,
        build_workflow,
    )

    from support.fake_sam import GoodEveryNth

    grounding = tmp_path / "grounding.parquet"
    rows = build(release, "train", grounding, recipe="veteran")
    report = build_mask_comprehension(grounding, tmp_path / "mc.parquet", GoodEveryNth(2), case_mix="all")
    assert report.rows == 0 and [entry["reason"] for entry in report.skipped] == [GENERALIZED_MASK_COMPREHENSION] * 6
    auxiliary = build_auxiliary(grounding, tmp_path / "aux.parquet")
    assert auxiliary.rows == 4 and len(auxiliary.skipped) == 2
    corrupted = [Row(row) for row in pq.read_table(tmp_path / "aux.parquet").to_pylist()]
    assert all(row.ground_truth.objects for row in corrupted)  # the union of the objects is what was corrupted
    build_workflow(grounding, tmp_path / "workflow.parquet")
    workflow = [Row(row) for row in pq.read_table(tmp_path / "workflow.parquet").to_pylist()]
    assert [len(row.ground_truth.objects) for row in workflow] == [len(row.ground_truth.objects) for row in rows]
    assert {row.agent_name for row in workflow} == {"veteran_workflow"}
