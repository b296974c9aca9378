"""Data preparation on small datasets written in the real on-disk formats inside the tests."""

import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO

from data_prep import __main__ as cli
from data_prep import rows as rows_module
from data_prep.corruption import corrupt_mask
from data_prep.safe_pickle import UnsafePickleError, load_plain_pickle
from data_prep.synthetic import write_reasonseg_split, write_refer_dataset
from recipe.common.labels import label_mask
from reward_server.masks import MODEL_SIZE, decode_rle, mask_to_box, original_to_model, resize_mask

pytestmark = pytest.mark.slow


@pytest.fixture
def refer(tmp_path: Path):
    return write_refer_dataset(tmp_path / "downloads", "refcocog", num_images=6, objects_per_image=2)


def refer_args(refer, out: Path, *extra: str) -> list[str]:
    return [
        "refer",
        "--dataset",
        "refcocog",
        "--refer-root",
        str(refer.refer_root),
        "--image-root",
        str(refer.image_root),
        "--out",
        str(out),
        "--workers",
        "1",
        *extra,
    ]


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_refer_rows_match_pycocotools_and_agree_at_840(refer, tmp_path):
    out = tmp_path / "train.parquet"
    assert cli.main([*refer_args(refer, out), "--split", "train"]) == 0
    rows = read_rows(out)
    coco = COCO(str(refer.refer_root / "refcocog" / "instances.json"))
    assert len(rows) == 8  # 2 train images x 2 objects x 2 sentences
    for row in rows:
        truth, info = row["reward_model"]["ground_truth"], row["extra_info"]
        expected = coco.annToMask(coco.loadAnns(info["ann_id"])[0]).astype(bool)
        original = decode_rle(truth["orig_mask"])
        assert np.array_equal(original, expected)
        assert truth["orig_size"] == list(expected.shape)
        assert np.array_equal(decode_rle(truth["mask"]), resize_mask(expected, (MODEL_SIZE, MODEL_SIZE)))
        assert truth["box"] == pytest.approx(original_to_model(mask_to_box(expected), expected.shape).tolist())
        assert row["prompt"][0]["content"].startswith("<image>Let's find out \"" + info["question"])
        assert row["data_source"] == "refcocog_train" and row["orig_image"] is None
        assert cv2.imdecode(np.frombuffer(row["images"][0]["bytes"], np.uint8), 1).shape == (840, 840, 3)
    report = json.loads((tmp_path / "train.report.json").read_text())
    assert report["rows"] == 8 and report["skipped"] == []


def test_sampling_is_reproducible(refer, tmp_path):
    keys = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / f"{name}.parquet"
        cli.main([*refer_args(refer, out), "--split", "train", "--limit", "5", "--seed", str(seed)])
        keys.append([row["extra_info"]["key"] for row in read_rows(out)])
    assert keys[0] == keys[1] and len(keys[0]) == 5
    assert keys[0] != keys[2]


def test_evaluation_sets_keep_the_original(refer, tmp_path):
    out = tmp_path / "test.parquet"
    assert cli.main([*refer_args(refer, out), "--split", "test"]) == 0
    for row in read_rows(out):
        original = cv2.imdecode(np.frombuffer(row["orig_image"], np.uint8), 1)
        assert list(original.shape[:2]) == row["reward_model"]["ground_truth"]["orig_size"]


def test_reasonseg_ignore_pixels_are_255_and_flags_are_dropped(tmp_path):
    directory = write_reasonseg_split(tmp_path, "val", num_images=3)
    out = tmp_path / "reasonseg_val.parquet"
    assert cli.main(["reasonseg", "--root", str(directory.parent), "--split", "val", "--out", str(out)]) == 0
    rows = read_rows(out)
    assert len(rows) == 3  # the first text only, as LISA evaluates
    for row in rows:
        stem = Path(row["extra_info"]["key"]).parent.name
        shapes = {
            s["label"]: np.asarray(s["points"]) for s in json.loads((directory / f"{stem}.json").read_text())["shapes"]
        }
        truth = row["reward_model"]["ground_truth"]
        height, width = truth["orig_size"]
        target = np.zeros((height, width), np.uint8)
        ignore = np.zeros((height, width), np.uint8)
        for mask, points in ((target, shapes["target"]), (ignore, shapes["ignore"])):
            cv2.polylines(mask, [points.astype(np.int32)], True, 1, 1)
            cv2.fillPoly(mask, [points.astype(np.int32)], 1)
        # The smaller ignore polygon is painted over the larger target, as LISA sorts by area.
        assert np.array_equal(decode_rle(truth["orig_ignore"]), ignore.astype(bool))
        assert np.array_equal(decode_rle(truth["orig_mask"]), target.astype(bool) & ~ignore.astype(bool))
        labels = label_mask(truth)  # the evaluation form: 255 on ignored pixels
        assert set(np.unique(labels)) == {0, 1, 255} and np.array_equal(labels == 255, ignore.astype(bool))
        assert np.array_equal(label_mask(truth, original=False), resize_mask(labels, (MODEL_SIZE, MODEL_SIZE)))
        assert row["extra_info"]["question"].startswith("What would you use")


def test_bad_samples_are_skipped_counted_and_reported(refer, tmp_path):
    instances_path = refer.refer_root / "refcocog" / "instances.json"
    instances = json.loads(instances_path.read_text())
    train_images = [image for image in instances["images"] if image["id"] in (1000, 1003)]
    (refer.image_root / train_images[1]["file_name"]).unlink()  # missing image
    instances["annotations"][1]["segmentation"] = [[10.0, 10.0, 12.0, 12.0]]  # a degenerate polygon
    instances_path.write_text(json.dumps(instances))
    refs_path = refer.refer_root / "refcocog" / "refs(umd).p"
    refs = load_plain_pickle(refs_path)
    refs.append({**refs[0], "ref_id": 1, "ann_id": 424242})  # a ref pointing at an unknown annotation
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    out = tmp_path / "train.parquet"
    assert cli.main([*refer_args(refer, out), "--split", "train"]) == 0
    report = json.loads((tmp_path / "train.report.json").read_text())
    reasons = [entry["reason"] for entry in report["skipped"]]
    assert any("unknown annotation 424242" in reason for reason in reasons)
    assert sum("unreadable image" in reason for reason in reasons) == 4  # 2 objects x 2 sentences
    assert sum("corrupt annotation" in reason for reason in reasons) == 2
    assert report["rows"] == len(read_rows(out)) == 8 - 4 - 2


def test_truncated_pickle_is_a_clear_error(refer, tmp_path, capsys):
    refs_path = refer.refer_root / "refcocog" / "refs(umd).p"
    refs_path.write_bytes(refs_path.read_bytes()[:-40])
    assert cli.main([*refer_args(refer, tmp_path / "x.parquet"), "--split", "train"]) == 2
    assert "truncated or not a pickle" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited-by-pickle",))


def test_malicious_pickle_is_refused(refer, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refs_path = refer.refer_root / "refcocog" / "refs(umd).p"
    refs_path.write_bytes(pickle.dumps([_Exploit()], protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refusing to load posix\.system"):
        load_plain_pickle(refs_path)
    assert cli.main([*refer_args(refer, tmp_path / "x.parquet"), "--split", "train"]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not (tmp_path / "exploited-by-pickle").exists()


def test_an_interrupted_run_resumes_without_redoing_shards(refer, tmp_path, monkeypatch):
    out = tmp_path / "train.parquet"
    args = [*refer_args(refer, out), "--split", "train", "--shard-size", "3"]
    real_build_row, calls = rows_module.build_row, []

    def dies_on_the_seventh(sample, index, options):
        calls.append(index)
        if len(calls) == 7:
            raise KeyboardInterrupt  # a killed run, mid-shard
        return real_build_row(sample, index, options)

    monkeypatch.setattr(cli, "build_row", dies_on_the_seventh)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args)
    assert not out.exists()  # no half-written output under the final name
    parts = sorted(p.name for p in (tmp_path / "train.parquet.parts").iterdir())
    assert parts == [
        "fingerprint.json",
        "part-00000.parquet",
        "part-00000.skipped.json",
        "part-00001.parquet",
        "part-00001.skipped.json",
    ]
    calls.clear()
    monkeypatch.setattr(
        cli, "build_row", lambda sample, index, options: calls.append(index) or real_build_row(sample, index, options)
    )
    assert cli.main(args) == 0
    assert calls == [6, 7]  # only the unfinished shard is built again
    clean = tmp_path / "clean.parquet"
    monkeypatch.setattr(cli, "build_row", real_build_row)
    cli.main([*refer_args(refer, clean), "--split", "train"])
    assert read_rows(out) == read_rows(clean)


def test_corruption_regions_are_consistent_and_drawn_with_probability_one_half():
    gt = np.zeros((840, 840), np.uint8)
    cv2.ellipse(gt, (420, 400), (220, 160), 15, 0, 360, 1, -1)
    gt = gt.astype(bool)
    with_fp = with_fn = 0
    for seed in range(300):
        corruption = corrupt_mask(gt, np.random.default_rng(seed))
        fp, fn = corruption.false_positive, corruption.false_negative
        expected = gt.copy()
        if fp is not None:
            with_fp += 1
            assert not (fp & gt).any() and fp.any()
            expected |= fp
        if fn is not None:
            with_fn += 1
            assert (fn <= gt).all() and fn.any() and fn.sum() <= 0.5 * gt.sum()
            expected &= ~fn
        assert np.array_equal(corruption.mask, expected)
    assert 0.4 < with_fp / 300 < 0.6 and 0.4 < with_fn / 300 < 0.6


def test_a_row_loads_through_verls_rlhf_dataset(refer, tmp_path, tiny_qwen_path):
    from omegaconf import OmegaConf
    from qwen_vl_utils import process_vision_info
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    out = tmp_path / "train.parquet"
    cli.main([*refer_args(refer, out), "--split", "train", "--limit", "2"])
    # No worker processes (None): `datasets` forks a pool for any number, and a fork of this threaded process can hang.
    config = OmegaConf.create(
        {"max_prompt_length": 1300, "filter_overlong_prompts": True, "filter_overlong_prompts_workers": None}
    )
    processor = hf_processor(tiny_qwen_path)
    dataset = RLHFDataset(str(out), hf_tokenizer(tiny_qwen_path), config, processor=processor)
    assert len(dataset) == 2  # nothing filtered as overlong
    item = dataset[0]
    assert item["agent_name"] == "single_turn_agent" and item["data_source"] == "refcocog_train"
    assert set(item["reward_model"]["ground_truth"]) >= {"mask", "box", "orig_size", "orig_mask"}
    images, _ = process_vision_info(item["raw_prompt"])
    assert images[0].size == (840, 840)
    text = processor.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=images, return_tensors="pt")
    assert int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 900
