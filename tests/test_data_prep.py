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
from data_prep import reasonseg
from data_prep import rows as rows_module
from data_prep.corruption import corrupt_mask
from data_prep.safe_pickle import UnsafePickleError, load_plain_pickle
from data_prep.shards import Report
from data_prep.synthetic import write_reasonseg_split, write_refer_dataset
from recipe.evaluate.samples import EvalSample, iter_samples
from recipe.task.labels import label_mask
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


def lisa_get_mask_from_json(json_path, img):
    """LISA's ``utils/data_processing.get_mask_from_json``, transcribed (the reference for ReasonSeg labels)."""
    try:
        with open(json_path, encoding="utf-8") as r:  # LISA: open(json_path, "r") on a UTF-8 locale
            anno = json.loads(r.read())
    except Exception:  # LISA: a bare except
        with open(json_path, encoding="cp1252") as r:
            anno = json.loads(r.read())

    inform = anno["shapes"]
    comments = anno["text"]
    is_sentence = anno["is_sentence"]

    height, width = img.shape[:2]

    ### sort polies by area
    area_list = []
    valid_poly_list = []
    for i in inform:
        label_id = i["label"]
        points = i["points"]
        if "flag" == label_id.lower():  ## meaningless deprecated annotations  # noqa: SIM300
            continue

        tmp_mask = np.zeros((height, width), dtype=np.uint8)
        cv2.polylines(tmp_mask, np.array([points], dtype=np.int32), True, 1, 1)
        cv2.fillPoly(tmp_mask, np.array([points], dtype=np.int32), 1)
        tmp_area = tmp_mask.sum()

        area_list.append(tmp_area)
        valid_poly_list.append(i)

    ### ground-truth mask
    sort_index = np.argsort(area_list)[::-1].astype(np.int32)
    sort_index = list(sort_index)
    sort_inform = []
    for s_idx in sort_index:
        sort_inform.append(valid_poly_list[s_idx])

    mask = np.zeros((height, width), dtype=np.uint8)
    for i in sort_inform:
        label_id = i["label"]
        points = i["points"]

        if "ignore" in label_id.lower():  # noqa: SIM108
            label_value = 255  # ignored during evaluation
        else:
            label_value = 1  # target

        cv2.polylines(mask, np.array([points], dtype=np.int32), True, label_value, 1)
        cv2.fillPoly(mask, np.array([points], dtype=np.int32), label_value)

    return mask, comments, is_sentence


def write_lisa_sample(directory: Path, stem: str, shapes: list[dict], text: str = "Which part?", hw=(120, 160)):
    """One ReasonSeg image (flat grey) and its LISA json, UTF-8."""
    directory.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(directory / f"{stem}.jpg"), np.full((*hw, 3), 127, np.uint8))
    document = {"text": [text, "another phrasing"], "is_sentence": True, "shapes": shapes}
    (directory / f"{stem}.json").write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")


def reasonseg_rows(root: Path, split: str, tmp_path: Path) -> tuple[list[dict], dict, str]:
    """Rows, report json and printed summary of ``python -m data_prep reasonseg`` on ``root/split``."""
    out = tmp_path / f"reasonseg_{split}.parquet"
    args = ["reasonseg", "--root", str(root), "--split", split, "--out", str(out), "--workers", "1"]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / f"reasonseg_{split}.report.json").read_text())
    return read_rows(out), report, Report(**report).summary()


def lisa_reference(directory: Path, stem: str) -> tuple[np.ndarray, list[str]]:
    image = cv2.imread(str(directory / f"{stem}.jpg"))
    mask, comments, _ = lisa_get_mask_from_json(str(directory / f"{stem}.json"), image)
    return mask, comments


def square(label: str, x: int, y: int, side: int = 50) -> dict:
    points = [[x, y], [x + side, y], [x + side, y + side], [x, y + side]]
    return {"label": label, "points": points, "shape_type": "polygon"}


@pytest.mark.parametrize("first", ["target", "ignore"])
def test_equal_area_overlaps_are_painted_as_lisa_paints_them(tmp_path, first):
    directory = tmp_path / "ReasonSeg" / "val"
    second = "ignore" if first == "target" else "target"
    write_lisa_sample(directory, "tie", [square(first, 10, 10), square(second, 35, 35)])
    (row,), _, _ = reasonseg_rows(directory.parent, "val", tmp_path)
    expected, _ = lisa_reference(directory, "tie")
    labels = label_mask(row["reward_model"]["ground_truth"])
    assert np.array_equal(labels, expected)
    # Equal areas: LISA's argsort-then-reverse paints the first-listed polygon last, so it wins the overlap.
    assert labels[40:60, 40:60].tolist() == np.full((20, 20), 1 if first == "target" else 255).tolist()


def test_a_cp1252_json_is_read_as_lisa_reads_it(tmp_path):
    directory = tmp_path / "ReasonSeg" / "val"
    write_lisa_sample(directory, "menu", [square("target", 20, 20)])
    question = "Where would you look for the caf\u00e9\u2019s \u201cdaily menu\u201d?"
    document = {"text": [question], "is_sentence": True, "shapes": [square("target", 20, 20)]}
    (directory / "menu.json").write_bytes(json.dumps(document, ensure_ascii=False).encode("cp1252"))
    with pytest.raises(UnicodeDecodeError):
        (directory / "menu.json").read_text(encoding="utf-8")  # the fixture really is not UTF-8
    (row,), report, _ = reasonseg_rows(directory.parent, "val", tmp_path)
    expected, comments = lisa_reference(directory, "menu")
    assert row["extra_info"]["question"] == comments[0] == question
    assert np.array_equal(label_mask(row["reward_model"]["ground_truth"]), expected)
    assert report["skipped"] == []


def test_evaluation_keeps_empty_and_vanishing_targets_and_training_skips_them(tmp_path):
    # A one-pixel row of the 1000-pixel-high image that nearest-exact resizing to 840 never samples.
    rows_index = np.arange(1000, dtype=np.uint16).reshape(-1, 1).repeat(4, axis=1)
    sampled = cv2.resize(rows_index, (4, MODEL_SIZE), interpolation=cv2.INTER_NEAREST_EXACT)[:, 0]
    skipped_row = int(min(set(range(1000)) - set(sampled.tolist())))
    line = {"label": "target", "points": [[0, skipped_row], [50, skipped_row]]}  # two points: LISA draws a line
    samples = {
        "all_ignore": ([square("ignore", 10, 10)], (120, 160)),
        "flag_only": ([square("flag", 10, 10)], (120, 160)),
        "vanishing": ([line], (1000, 200)),
    }
    root = tmp_path / "ReasonSeg"
    for split in ("val", "train"):
        for stem, (shapes, hw) in samples.items():
            write_lisa_sample(root / split, stem, shapes, hw=hw)
    rows, report, _ = reasonseg_rows(root, "val", tmp_path)
    assert report["skipped"] == [] and len(rows) == 3
    parquet = tmp_path / "reasonseg_val.parquet"
    loaded = list(iter_samples([parquet]))
    for row, sample in zip(rows, loaded, strict=True):
        stem = Path(row["extra_info"]["key"]).parent.name
        expected, _ = lisa_reference(root / "val", stem)
        assert isinstance(sample, EvalSample) and np.array_equal(sample.labels, expected)
        truth = row["reward_model"]["ground_truth"]
        assert not decode_rle(truth["mask"]).any()  # nothing of the target at 840
        assert (truth["box"] is None) == (stem != "vanishing")  # an empty target has no box
    assert loaded[2].labels[skipped_row, :51].all()  # the vanishing line is scored at the original resolution
    rows, report, summary = reasonseg_rows(root, "train", tmp_path)
    assert rows == []
    reasons = sorted(entry["reason"].split(":")[0] for entry in report["skipped"])
    assert reasons == [
        "target vanishes when the 1000x200 image is resized to 840",
        "zero-area target",
        "zero-area target",
    ]
    assert "2 x zero-area target" in summary


def test_reasonseg_split_size_is_reported_against_the_published_size(tmp_path, monkeypatch):
    directory = write_reasonseg_split(tmp_path, "val", num_images=4)
    _, report, summary = reasonseg_rows(directory.parent, "val", tmp_path)
    assert "ReasonSeg val: n = 4 images (published: 200)" in summary
    assert report["warnings"] == [
        "ReasonSeg val has n = 4 images, the published split 200; none failed, so the "
        "directory holds another set of files"
    ]
    monkeypatch.setitem(reasonseg.PUBLISHED_SIZES, "val", 4)
    _, report, summary = reasonseg_rows(directory.parent, "val", tmp_path)
    assert report["warnings"] == [] and "WARNING" not in summary and "n = 4 images (published: 4)" in summary
    (directory / "reasonseg_val_000.jpg").unlink()
    (directory / "reasonseg_val_001.json").write_bytes(b'{"text": ["\x81"]')  # 0x81 is neither UTF-8 nor cp1252
    (directory / "reasonseg_val_002.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(directory / "stray.jpg"), np.zeros((8, 8, 3), np.uint8))
    rows, report, summary = reasonseg_rows(directory.parent, "val", tmp_path)
    assert len(rows) == 1
    (warning,) = report["warnings"]
    assert warning.startswith("ReasonSeg val has n = 1 images, the published split 4; 4 not read: ")
    named = dict(entry.rsplit(" (", 1) for entry in warning.split(" not read: ")[1].split("; "))
    assert sorted(named) == [f"reasonseg/val/reasonseg_val_00{i}" for i in range(3)] + ["reasonseg/val/stray"]
    assert named["reasonseg/val/reasonseg_val_000"].startswith("no image next to the json")
    assert named["reasonseg/val/reasonseg_val_001"].startswith("unreadable LISA json: UnicodeDecodeError")
    assert named["reasonseg/val/reasonseg_val_002"].startswith("unreadable image")
    assert named["reasonseg/val/stray"].startswith("no json next to the image")
    assert f"\nWARNING: {warning}" in summary


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
