"""``python -m data_prep custom`` on small files written here, checked against pycocotools, PIL/cv2, verl's
RLHFDataset and the evaluator's sample loader."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data_prep import __main__ as cli
from reward_server.masks import decode_rle

SIZES = {"a.jpg": (60, 80), "b.png": (50, 40), "c.jpg": (70, 90)}  # (H, W)
POLYGON = [[10, 10, 70, 12, 40, 50]]
IGNORE_POLYGON = [[30, 20, 50, 20, 50, 40, 30, 40]]


def polygon_mask(polygons: list, height: int, width: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)


def coco_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


@pytest.fixture
def data(tmp_path: Path) -> dict:
    """Images, masks and the three good records (polygon, RLE, PNG), with their expected label masks."""
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (height, width) in SIZES.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "images" / name)
    rle_mask = np.zeros(SIZES["b.png"], bool)
    rle_mask[5:30, 8:33] = True
    rle_ignore = np.zeros(SIZES["b.png"], bool)
    rle_ignore[25:45, 20:38] = True
    png_mask = np.zeros(SIZES["c.jpg"], np.uint8)
    png_mask[20:60, 10:50] = 255
    cv2.imwrite(str(root / "c_mask.png"), png_mask)
    records = [
        {"image": "images/a.jpg", "question": "the red one", "mask": POLYGON, "ignore": IGNORE_POLYGON},
        {"image": "images/b.png", "question": "what holds the tea?", "mask": coco_rle(rle_mask), "ignore": None},
        {"image": str(root / "images" / "c.jpg"), "question": "the door", "mask": "c_mask.png"},
    ]
    records[1]["ignore"] = coco_rle(rle_ignore)
    expected = []
    for target, ignore in (
        (polygon_mask(POLYGON, *SIZES["a.jpg"]), polygon_mask(IGNORE_POLYGON, *SIZES["a.jpg"])),
        (rle_mask, rle_ignore),
        (cv2.imread(str(root / "c_mask.png"), cv2.IMREAD_UNCHANGED) > 0, None),
    ):
        labels = target.astype(np.uint8)
        if ignore is not None:
            labels[ignore] = 255
        expected.append(labels)
    return {"root": root, "records": records, "labels": expected}


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def run(file: Path, out: Path, split: str, *extra: str) -> int:
    return cli.main(["custom", "--file", str(file), "--split", split, "--out", str(out), "--workers", "1", *extra])


def check_training_truth(row: dict, labels: np.ndarray) -> None:
    """Ground truth at the original size and at 840 (PIL's nearest neighbour) against the expected label mask."""
    truth = row["reward_model"]["ground_truth"]
    height, width = labels.shape
    assert truth["orig_size"] == [height, width]
    assert np.array_equal(decode_rle(truth["orig_mask"]), labels == 1)
    assert np.array_equal(decode_rle(truth["orig_ignore"]), labels == 255)
    at_840 = np.asarray(Image.fromarray(labels).resize((840, 840), Image.Resampling.NEAREST))
    assert np.array_equal(decode_rle(truth["mask"]), at_840 == 1)
    assert np.array_equal(decode_rle(truth["ignore"]), at_840 == 255)
    rows, cols = np.nonzero(labels == 1)
    scale = np.array([840 / width, 840 / height] * 2)
    expected_box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]) * scale
    assert truth["box"] == pytest.approx(expected_box.tolist())


def test_training_rows_hold_the_given_masks(data, tmp_path, capsys):
    file = write_jsonl(data["root"] / "train.jsonl", data["records"])
    out = tmp_path / "out" / "train.parquet"
    assert run(file, out, "train") == 0
    rows = pq.read_table(out).to_pylist()
    assert [row["extra_info"]["key"] for row in rows] == [
        "custom/train/line1",
        "custom/train/line2",
        "custom/train/line3",
    ]
    for row, record, labels in zip(rows, data["records"], data["labels"], strict=True):
        if record.get("ignore") is None:
            truth = row["reward_model"]["ground_truth"]
            assert truth["orig_ignore"] is None and truth["ignore"] is None
            assert np.array_equal(decode_rle(truth["orig_mask"]), labels == 1)
        else:
            check_training_truth(row, labels)
        assert row["data_source"] == "custom_train" and row["orig_image"] is None
        assert row["extra_info"]["question"] == record["question"] and row["agent_name"] == "single_turn_agent"
        assert cv2.imdecode(np.frombuffer(row["images"][0]["bytes"], np.uint8), 1).shape == (840, 840, 3)
    assert "train.parquet: 3 rows, 0 skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "train.report.json").read_text())["skipped"] == []


def test_evaluation_rows_load_with_the_input_mask_and_original_image(data, tmp_path):
    from recipe.evaluate.samples import EvalSample, iter_samples

    file = write_jsonl(data["root"] / "val.jsonl", data["records"])
    out = tmp_path / "val.parquet"
    assert run(file, out, "val", "--name", "shop", "--recipe", "veteran") == 0
    samples = list(iter_samples([out]))
    assert all(isinstance(sample, EvalSample) for sample in samples) and len(samples) == 3
    for sample, record, labels in zip(samples, data["records"], data["labels"], strict=True):
        assert sample.dataset == "shop_val" and sample.question == record["question"]
        assert np.array_equal(sample.labels, labels)
        image_path = Path(record["image"]) if Path(record["image"]).is_absolute() else data["root"] / record["image"]
        assert np.array_equal(sample.image, np.asarray(Image.open(image_path).convert("RGB")))
    rows = pq.read_table(out).to_pylist()
    assert {row["agent_name"] for row in rows} == {"veteran_grounding"}
    assert {row["extra_info"]["task"] for row in rows} == {"grounding"}


def test_every_bad_row_is_skipped_with_its_line_and_reason(data, tmp_path, capsys):
    root, good = data["root"], data["records"]
    (root / "broken.jpg").write_bytes(b"not an image")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cv2.imwrite(str(root / "empty.png"), np.zeros(SIZES["a.jpg"], np.uint8))
    cv2.imwrite(str(root / "small.png"), np.full((5, 5), 255, np.uint8))
    lines = [
        good[0],
        {**good[0], "image": "images/nope.jpg"},
        {**good[0], "image": "broken.jpg"},
        {**good[0], "mask": "empty.png", "ignore": None},
        {**good[0], "mask": [[0, 0, 200, 0, 0, 10]]},
        {**good[0], "mask": "broken.png"},
        '{"image": "images/a.jpg", "question": "x", "mask": ',
        "",
        {"image": "images/a.jpg", "mask": POLYGON},
        good[1],
        {**good[0], "mask": "small.png"},
        "[1, 2]",
        {**good[0], "ignore": "gone.png"},
        {**good[0], "mask": [10, 10, 70, 12, 40, 50]},
    ]
    file = write_jsonl(root / "mixed.jsonl", lines)
    out = tmp_path / "mixed.parquet"
    # Evaluation rows keep empty targets, yet an empty given mask is a mistake in the file: still skipped.
    assert cli.main(["custom", "--file", str(file), "--split", "test", "--out", str(out), "--workers", "2"]) == 0
    keys = [row["extra_info"]["key"] for row in pq.read_table(out).to_pylist()]
    assert keys == ["custom/test/line1", "custom/test/line10"]
    report = json.loads((tmp_path / "mixed.report.json").read_text())
    reasons = {entry["key"].removeprefix("custom/test/"): entry["reason"] for entry in report["skipped"]}
    expected = {
        "line2": "missing image",
        "line3": "unreadable image",
        "line4": "empty mask",
        "line5": "outside the 60x80 image",
        "line6": "unreadable mask PNG",
        "line7": "malformed JSON line",
        "line9": "missing field 'question'",
        "line11": "is 5x5, the image 60x80",
        "line12": "expected an object",
        "line13": "missing ignore PNG",
        "line14": "list of polygons",
    }
    assert reasons.keys() == expected.keys()
    for line, reason in expected.items():
        assert reason in reasons[line], (line, reasons[line])
    assert "mixed.parquet: 2 rows, 11 skipped" in capsys.readouterr().out


def test_csv_rows_match_the_references(data, tmp_path):
    file = data["root"] / "train.csv"
    with file.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "question", "mask", "ignore"])
        for record in data["records"]:
            cells = [record.get("mask"), record.get("ignore")]
            writer.writerow(
                [
                    record["image"],
                    record["question"],
                    *("" if c is None else c if isinstance(c, str) else json.dumps(c) for c in cells),
                ]
            )
        writer.writerow(["images/a.jpg", "broken cell", "[[1, 2, 3", ""])
        writer.writerow(["images/a.jpg", "too many", json.dumps(POLYGON), "", "extra"])
    out = tmp_path / "csv.parquet"
    assert run(file, out, "train") == 0
    rows = pq.read_table(out).to_pylist()
    # The header is line 1; records follow it.
    assert [row["extra_info"]["key"] for row in rows] == [
        "custom/train/line2",
        "custom/train/line3",
        "custom/train/line4",
    ]
    check_training_truth(rows[0], data["labels"][0])
    check_training_truth(rows[1], data["labels"][1])
    assert np.array_equal(decode_rle(rows[2]["reward_model"]["ground_truth"]["orig_mask"]), data["labels"][2] == 1)
    report = json.loads((tmp_path / "csv.report.json").read_text())
    reasons = {entry["key"]: entry["reason"] for entry in report["skipped"]}
    assert "malformed JSON in the mask column" in reasons["custom/train/line5"]
    assert "more fields than the 4 columns" in reasons["custom/train/line6"]


def test_a_file_that_cannot_be_read_at_all_is_an_error(data, tmp_path, capsys):
    (data["root"] / "no_mask.csv").write_text("image,question\nimages/a.jpg,the red one\n")
    (data["root"] / "rows.txt").write_text("")
    for name in ("no_mask.csv", "rows.txt", "absent.jsonl"):
        assert run(data["root"] / name, tmp_path / "out.parquet", "train") == 2
    errors = capsys.readouterr().err
    assert "the CSV header lacks ['mask or masks']" in errors and "expected a .jsonl or .csv file" in errors
    assert "cannot read" in errors and not (tmp_path / "out.parquet").exists()


def test_an_edited_file_never_reuses_the_shards_of_its_old_content(data, tmp_path, monkeypatch):
    file = write_jsonl(data["root"] / "train.jsonl", data["records"])
    out = tmp_path / "train.parquet"
    real_build_row = cli.build_row

    def dies_on_the_second(sample, index, options, **renderers):
        if index == 1:
            raise KeyboardInterrupt
        return real_build_row(sample, index, options, **renderers)

    monkeypatch.setattr(cli, "build_row", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run(file, out, "train", "--shard-size", "1")
    monkeypatch.setattr(cli, "build_row", real_build_row)
    write_jsonl(file, data["records"][:2])
    assert run(file, out, "train", "--shard-size", "1") == 2  # refused: the parts belong to the old content
    write_jsonl(file, data["records"])
    assert run(file, out, "train", "--shard-size", "1") == 0
    assert json.loads((tmp_path / "train.report.json").read_text())["resumed_shards"] == 1


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "agent_name"), [("samr1", "single_turn_agent"), ("veteran", "veteran_grounding")])
def test_a_training_row_loads_through_verls_rlhf_dataset(data, tmp_path, tiny_qwen_path, recipe, agent_name):
    from omegaconf import OmegaConf
    from qwen_vl_utils import process_vision_info
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    file = write_jsonl(data["root"] / "train.jsonl", data["records"])
    out = tmp_path / "train.parquet"
    assert run(file, out, "train", "--recipe", recipe) == 0
    # Not filtered by verl (its filter spends half a minute hashing the processor): the length is checked below.
    config = OmegaConf.create({"max_prompt_length": 1300, "filter_overlong_prompts": False})
    processor = hf_processor(tiny_qwen_path)
    dataset = RLHFDataset(str(out), hf_tokenizer(tiny_qwen_path), config, processor=processor)
    assert len(dataset) == 3
    item = dataset[1]
    assert item["agent_name"] == agent_name and item["data_source"] == "custom_train"
    assert decode_rle(item["reward_model"]["ground_truth"]["orig_mask"]).shape == SIZES["b.png"]
    images, _ = process_vision_info(item["raw_prompt"])
    assert images[0].size == (840, 840)
    text = processor.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=images, return_tensors="pt")
    assert int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 900
    assert inputs["input_ids"].shape[1] <= 1300
