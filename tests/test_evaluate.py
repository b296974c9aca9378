"""The evaluator against independent references: numpy metrics, exact oracle boxes, the workflow's own steps."""

import asyncio
import io
import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data_prep.schema import ROW
from recipe.evaluate.config import EvalConfig
from recipe.evaluate.records import RECORDS_DIR, RecordWriter, read_records
from recipe.evaluate.runner import evaluate
from recipe.evaluate.samples import EvalSample, iter_samples
from recipe.evaluate.segmenter import BatchedSegmenter
from recipe.evaluate.summary import step_curves, summarize
from recipe.veteran.workflow import Episode, run_episodes
from reward_server.images import to_rgb
from reward_server.masks import decode_rle, encode_rle
from reward_server.protocol import ImageRef, Prompt, SegResult

from support.fake_sam import EngineClient

# ------------------------------------------------------------------ independent references


def rect(box, hw):
    """A box rasterised with rounded edges (the fake SAM2's mask)."""
    x1, y1, x2, y2 = (max(0, round(v)) for v in box)
    mask = np.zeros(hw, bool)
    mask[y1:y2, x1:x2] = True
    return mask


def click_mask(mask, point, label):
    x, y = point
    square = rect((x - 10, y - 10, x + 11, y + 11), mask.shape)
    return mask | square if label == 1 else mask & ~square


class BoxSam:
    """A fake SAM2 engine: the prompt's box, plus (minus) a 21 px square around each positive (negative) click."""

    def __init__(self):
        self.batches, self.prompts = [], []

    def segment(self, requests, images=None, ground_truths=None):
        self.batches.append(len(requests))
        results = []
        for request in requests:
            hw = to_rgb(images[request.image_key]).shape[:2]
            self.prompts.append((hw, request.prompt))
            mask = rect(request.prompt.box, hw)
            for point, label in zip(request.prompt.points, request.prompt.labels, strict=True):
                mask = click_mask(mask, point, label)
            logits = np.zeros((256, 256), np.float16) if request.return_logits else None
            results.append(SegResult(mask=encode_rle(mask), score=1.0, logits=logits))
        return results


class ScriptedPolicy:
    """Answers by question (``object NNN`` in the prompt) and turn; records each batch's size."""

    def __init__(self, scripts):
        self.scripts, self.turns, self.batches, self.seconds = scripts, Counter(), [], 0.0

    async def generate(self, batch):
        self.batches.append(len(batch))
        texts = []
        for messages in batch:
            text = next(item["text"] for item in messages[0]["content"] if item["type"] == "text")
            question = re.search(r'"(object \d{3})"', text).group(1)
            script, turn = self.scripts[question], self.turns[question]
            self.turns[question] += 1
            texts.append(script[min(turn, len(script) - 1)])
        return texts


def reference_rows(files):
    """Each row's question, dataset, original size, target and ignore masks, read with pyarrow and pycocotools."""
    rows = []
    for path in files:
        for position, row in enumerate(pq.read_table(path).to_pylist()):
            truth = row["reward_model"]["ground_truth"]
            target = mask_utils.decode(dict(truth["orig_mask"], counts=truth["orig_mask"]["counts"].encode())) > 0
            ignore = np.zeros_like(target)
            if truth["orig_ignore"] is not None:
                rle = truth["orig_ignore"]
                ignore = mask_utils.decode(dict(rle, counts=rle["counts"].encode())) > 0
            try:
                with Image.open(io.BytesIO(row["orig_image"])) as image:
                    hw = (image.height, image.width)
            except OSError:  # the corrupt row of the edge-case file
                hw = None
            rows.append(
                {
                    "uid": f"{path.stem}:{position}",
                    "dataset": row["data_source"],
                    "question": row["extra_info"]["question"],
                    "hw": hw,
                    "target": target,
                    "ignore": ignore,
                    "box840": truth["box"],
                }
            )
    return rows


def overlap(pred, row):
    """LISA's I and U with ignored pixels removed; a failed answer is an empty prediction."""
    valid = ~row["ignore"]
    target = row["target"] & valid
    if pred is None:
        return 0, int(target.sum())
    pred = pred & valid
    return int((pred & target).sum()), int((pred | target).sum())


def giou_ciou(pairs, empty=1.0):
    ious = [i / u if u else empty for i, u in pairs]
    union = sum(u for _, u in pairs)
    return sum(ious) / len(ious), sum(i for i, _ in pairs) / union if union else math.nan


def to_original(value, hw, axis):
    return value * (hw[1] if axis == 0 else hw[0]) / 840


def answer(payload, think=True):
    body = f"<answer>{json.dumps(payload)}</answer>"
    return f"<think>looking at the image</think>{body}" if think else body


def safe_coordinate(value, size):
    """Moves an 840-space coordinate until its original-space value is far from a rounding boundary."""
    while abs((value * size / 840) % 1 - 0.5) < 0.02:
        value += 1
    return value


def config(tmp_path, files, mode, **overrides):
    cfg = EvalConfig(mode=mode, output_dir=str(tmp_path / "run"), report=False)
    cfg.data.files = [str(path) for path in files]
    cfg.generation.batch_size = 4
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture()
def eval_files(eval_sets, tmp_path):
    """The shared evaluation sets plus an edge-case file: an empty target, and a row with a corrupt image."""
    files = [shutil.copy(path, tmp_path / path.name) for path in sorted(eval_sets.glob("*.parquet"))]
    rows = pq.read_table(files[-1]).to_pylist()[:2]
    empty, corrupt = rows[0].copy(), rows[1].copy()
    height, width = rows[0]["reward_model"]["ground_truth"]["orig_size"]
    empty["reward_model"] = {
        "style": "rule",
        "ground_truth": {
            **rows[0]["reward_model"]["ground_truth"],
            "orig_mask": encode_rle(np.zeros((height, width), bool)),
        },
    }
    corrupt["orig_image"] = b"not an image"
    for row, number in ((empty, 900), (corrupt, 901)):
        row["data_source"] = "edge_test"
        row["extra_info"] = {**row["extra_info"], "question": f"object {number}"}
    edge = tmp_path / "edge_test.parquet"
    pq.write_table(pa.Table.from_pylist([empty, corrupt], schema=ROW), edge)
    return [*map(Path, files), edge]


# ------------------------------------------------------------------ metrics


def samr1_scripts(rows):
    """Per row, by position: garbage, a valid box + point, a point outside the image, a box without a point."""
    scripts, expected_prompts = {}, {}
    for index, row in enumerate(rows):
        kind = index % 4 if row["dataset"] != "edge_test" else 0
        x1, y1, x2, y2 = (round(v) for v in row["box840"])
        hw = row["hw"] or (840, 840)
        box = [safe_coordinate(x1 + 7, hw[1]), safe_coordinate(y1 - 5, hw[0])]
        box += [safe_coordinate(x2 - 9, hw[1]), safe_coordinate(y2 + 4, hw[0])]
        point = [safe_coordinate((x1 + x2) // 2, hw[1]), safe_coordinate((y1 + y2) // 2, hw[0])]
        payload = {"bbox_2d": box, "point_2d": point, "label": "it"}
        if kind == 0:
            scripts[row["question"]] = ["I cannot tell."]
        elif kind == 1:
            scripts[row["question"]] = [answer(payload)]
            expected_prompts[row["uid"]] = (box, point)
        elif kind == 2:
            scripts[row["question"]] = [answer({**payload, "point_2d": [900, 10]})]
        else:
            scripts[row["question"]] = [answer({"bbox_2d": box, "label": "it"})]
    return scripts, expected_prompts


def test_samr1_metrics_equal_numpy_with_failures_empty_unions_and_ignore_pixels(eval_files, tmp_path):
    rows = reference_rows(eval_files)
    assert any(row["ignore"].any() for row in rows), "the ReasonSeg rows must carry ignore pixels"
    scripts, prompts = samr1_scripts(rows)
    sam = BoxSam()
    summary = evaluate(config(tmp_path, eval_files, "samr1"), policy=ScriptedPolicy(scripts), engine=sam)
    records = read_records(tmp_path / "run")

    expected = {}
    for row in rows:
        if row["hw"] is None:
            continue
        pred = None
        if row["uid"] in prompts:
            (x1, y1, x2, y2), (px, py) = prompts[row["uid"]]
            hw = row["hw"]
            box = [to_original(x1, hw, 0), to_original(y1, hw, 1), to_original(x2, hw, 0), to_original(y2, hw, 1)]
            pred = click_mask(rect(box, hw), (to_original(px, hw, 0), to_original(py, hw, 1)), 1)
        expected[row["uid"]] = overlap(pred, row)
        record = records[row["uid"]]
        assert (record["intersection"], record["union"]) == expected[row["uid"]], row["uid"]
        assert record["failed"] == (pred is None)

    for dataset in {row["dataset"] for row in rows}:
        pairs = [expected[r["uid"]] for r in rows if r["dataset"] == dataset and r["uid"] in expected]
        giou, ciou = giou_ciou(pairs)
        assert summary["datasets"][dataset]["gIoU"] == pytest.approx(giou, rel=1e-12)
        assert summary["datasets"][dataset]["cIoU"] == pytest.approx(ciou, rel=1e-12, nan_ok=True)
        assert summary["datasets"][dataset]["n"] == len(pairs)
    assert any(u == 0 for _, u in expected.values()), "an empty union must be covered"
    assert summary["datasets"]["edge_test"]["n_skipped"] == 1
    assert "undecodable image" in records["edge_test:1"]["skipped"]
    assert len(sam.prompts) == len(prompts), "SAM2 is called for valid answers only"

    seg_zero = summarize(list(records.values()), "m", "samr1", seg_zero_compatible=True)
    pairs = [expected[r["uid"]] for r in rows if r["dataset"] == "edge_test" and r["uid"] in expected]
    assert seg_zero["datasets"]["edge_test"]["gIoU"] == giou_ciou(pairs, empty=0.0)[0] == 0.0
    assert summary["datasets"]["edge_test"]["gIoU"] == 1.0


def test_oracle_box_sends_the_original_gt_box_and_gives_exact_giou_ciou(eval_files, tmp_path):
    rows = reference_rows(eval_files[:-1])
    sam = BoxSam()
    summary = evaluate(config(tmp_path, eval_files[:-1], "oracle_box"), engine=sam)
    sent = Counter((hw, prompt.box) for hw, prompt in sam.prompts)
    expected_pairs = {}
    for row in rows:
        ys, xs = np.nonzero(row["target"])
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        assert sent[(row["hw"], box)] >= 1, row["uid"]
        expected_pairs.setdefault(row["dataset"], []).append(overlap(rect(box, row["hw"]), row))
    for dataset, pairs in expected_pairs.items():
        giou, ciou = giou_ciou(pairs)
        assert summary["datasets"][dataset]["gIoU"] == pytest.approx(giou, rel=1e-12)
        assert summary["datasets"][dataset]["cIoU"] == pytest.approx(ciou, rel=1e-12, nan_ok=True)
        assert summary["datasets"][dataset]["n_failed"] == 0


# ------------------------------------------------------------------ veteran


def veteran_scripts(rows):
    """Per row: click then stop; clicks until max_steps; a broken refinement; a broken box; stop at once."""
    scripts = {}
    for index, row in enumerate(rows):
        box = [round(v) for v in row["box840"]]
        grounding = answer({"bbox_2d": box})
        pos = answer({"pos_point": [(box[0] + box[2]) // 2, (box[1] + box[3]) // 2], "neg_point": None})
        neg = answer({"pos_point": None, "neg_point": [box[0] + 3, box[1] + 3]})
        both = answer({"pos_point": [box[0] + 5, box[1] + 5], "neg_point": [box[2] - 5, box[3] - 5]})
        stop = answer({"pos_point": None, "neg_point": None})
        scripts[row["question"]] = [
            [grounding, pos, stop],
            [grounding, neg, both, pos, stop],
            [grounding, "<answer>{bad json</answer>"],
            ["<answer>{}</answer>"],
            [grounding, stop],
        ][index % 5]
    return scripts


def test_veteran_records_match_the_workflow_step_by_step(eval_files, tmp_path):
    files = eval_files[:-1]
    rows = reference_rows(files)
    scripts = veteran_scripts(rows)
    sam = BoxSam()
    summary = evaluate(config(tmp_path, files, "veteran"), policy=ScriptedPolicy(scripts), engine=sam)
    records = read_records(tmp_path / "run")
    # The batch's boxes go to SAM2 in one call (its fourth sample's box is broken: 3 prompts).
    assert sam.batches[0] == 3

    samples = [s for s in iter_samples(files) if isinstance(s, EvalSample)]
    episodes = [Episode(s.question, s.model_image, max_steps=3, segment_image=s.image) for s in samples]
    asyncio.run(run_episodes(episodes, ScriptedPolicy(scripts), EngineClient(BoxSam())))
    by_uid = {row["uid"]: row for row in rows}
    terminations = Counter()
    for sample, episode in zip(samples, episodes, strict=True):
        record = records[sample.uid]
        assert record["termination"] == episode.termination
        terminations[episode.termination] += 1
        assert len(record["steps"]) == len(episode.steps)
        for step_record, step in zip(record["steps"], episode.steps, strict=True):
            assert step_record["response"] == step.response
            if step.prompt is None:
                assert step_record["prompt"] is None
            else:
                assert step_record["prompt"]["box"] == list(step.prompt.box)  # JSON keeps floats exactly
                assert step_record["prompt"]["points"] == [list(p) for p in step.prompt.points]
                assert step_record["prompt"]["labels"] == list(step.prompt.labels)
            if step.result is not None:
                mask = decode_rle(step.result.mask)
                assert np.array_equal(decode_rle(step_record["mask"]), mask)
                i, u = overlap(mask, by_uid[sample.uid])
                assert (step_record["intersection"], step_record["union"]) == (i, u)
    assert set(terminations) == {"stop", "max_steps", "invalid_refinement", "invalid_grounding"}

    # The model's 840-space coordinates reach SAM2 scaled to the original image: x * W / 840, y * H / 840.
    for sample in samples:
        steps, hw = records[sample.uid]["steps"], by_uid[sample.uid]["hw"]
        model_steps = [
            json.loads(re.search(r"<answer>(.*)</answer>", s["response"]).group(1)) if s["prompt"] else None
            for s in steps[:2]
        ]
        if steps[0]["prompt"] is not None:
            box = model_steps[0]["bbox_2d"]
            expected = [to_original(v, hw, axis % 2) for axis, v in enumerate(box)]
            assert steps[0]["prompt"]["box"] == pytest.approx(expected, rel=1e-12)
        if len(steps) > 1 and steps[1]["prompt"] is not None:
            clicks = [model_steps[1][key] for key in ("pos_point", "neg_point") if model_steps[1][key] is not None]
            expected = [[to_original(x, hw, 0), to_original(y, hw, 1)] for x, y in clicks]
            assert np.allclose(steps[1]["prompt"]["points"], expected, rtol=1e-12)
            assert steps[1]["prompt"]["box"] == steps[0]["prompt"]["box"], "refinement keeps the grounding box"

    # Figure 3 from the workflow's episodes: the mask in effect after each step, and who has stopped by then.
    for dataset, entry in summary["datasets"].items():
        members = [(s, e) for s, e in zip(samples, episodes, strict=True) if s.dataset == dataset]
        for step in range(4):
            pairs = []
            for sample, episode in members:
                masks = [st.result.mask for st in episode.steps[: step + 1] if st.result is not None]
                pairs.append(overlap(decode_rle(masks[-1]) if masks else None, by_uid[sample.uid]))
            giou, ciou = giou_ciou(pairs)
            assert entry["steps"][step]["gIoU"] == pytest.approx(giou, rel=1e-12)
            assert entry["steps"][step]["cIoU"] == pytest.approx(ciou, rel=1e-12, nan_ok=True)
            stopped = sum(e.termination == "stop" and len(e.steps) - 1 <= step for _, e in members)
            assert entry["steps"][step]["terminated"] == pytest.approx(stopped / len(members))


def test_step_curves_carry_the_last_mask_forward():
    records = [
        {"steps": [{"intersection": 5, "union": 10}, {"kind": "refinement"}], "termination": "stop", "gt_area": 8},
        {"steps": [{}], "termination": "invalid_grounding", "gt_area": 4},
        {
            "steps": [{"intersection": 2, "union": 8}, {"intersection": 6, "union": 8}],
            "termination": "max_steps",
            "gt_area": 7,
        },
    ]
    curve = step_curves(records, max_steps=1)
    assert curve[0]["gIoU"] == pytest.approx((0.5 + 0 + 0.25) / 3)
    assert curve[1]["gIoU"] == pytest.approx((0.5 + 0 + 0.75) / 3)
    assert curve[1]["cIoU"] == pytest.approx((5 + 0 + 6) / (10 + 4 + 8))
    assert [point["terminated"] for point in curve] == [0.0, pytest.approx(1 / 3)]


# ------------------------------------------------------------------ resume and robustness


class CrashingPolicy(ScriptedPolicy):
    def __init__(self, scripts, crash_after):
        super().__init__(scripts)
        self.crash_after = crash_after

    async def generate(self, batch):
        if len(self.batches) == self.crash_after:
            raise RuntimeError("worker lost")
        return await super().generate(batch)


def test_an_interrupted_run_resumes_without_recomputing_or_double_counting(eval_files, tmp_path):
    files = eval_files[:-1]
    rows = reference_rows(files)
    scripts, _ = samr1_scripts(rows)
    with pytest.raises(RuntimeError, match="worker lost"):
        evaluate(config(tmp_path, files, "samr1"), policy=CrashingPolicy(scripts, crash_after=2), engine=BoxSam())
    first = read_records(tmp_path / "run")
    assert len(first) == 8
    resumed = ScriptedPolicy(scripts)
    summary = evaluate(config(tmp_path, files, "samr1"), policy=resumed, engine=BoxSam())
    assert sum(resumed.batches) == len(rows) - 8, "finished samples are not generated again"
    assert set(resumed.turns) == {row["question"] for row in rows} - {r["question"] for r in first.values()}
    lines = [
        line for path in (tmp_path / "run" / RECORDS_DIR).glob("*.jsonl") for line in path.read_text().splitlines()
    ]
    assert len(lines) == len(rows) == summary["n"]
    fresh = evaluate(config(tmp_path / "fresh", files, "samr1"), policy=ScriptedPolicy(scripts), engine=BoxSam())
    assert summary["datasets"] == fresh["datasets"]


def test_a_torn_last_record_is_dropped_and_its_sample_evaluated_again(eval_files, tmp_path):
    files = eval_files[:-1]
    scripts, _ = samr1_scripts(reference_rows(files))
    evaluate(config(tmp_path, files, "samr1"), policy=ScriptedPolicy(scripts), engine=BoxSam())
    path = next((tmp_path / "run" / RECORDS_DIR).glob("*.jsonl"))
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
    assert len(read_records(tmp_path / "run")) == len(lines) - 1
    again = ScriptedPolicy(scripts)
    evaluate(config(tmp_path, files, "samr1"), policy=again, engine=BoxSam())
    assert sum(again.batches) == 1
    assert path.read_text().count("\n") == len(lines)
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_a_different_run_in_the_same_output_dir_is_refused(eval_files, tmp_path):
    files = eval_files[:-1]
    evaluate(config(tmp_path, files, "oracle_box"), engine=BoxSam())
    with pytest.raises(ValueError, match="changed: mode"):
        evaluate(config(tmp_path, files, "samr1"), policy=ScriptedPolicy({}), engine=BoxSam())


def test_record_writer_truncates_a_torn_tail(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"uid": "a"}\n{"uid": "b", "iou"')
    with RecordWriter(path) as writer:
        writer.write([{"uid": "c"}])
    assert [json.loads(line)["uid"] for line in path.read_text().splitlines()] == ["a", "c"]


def test_segmenter_batches_concurrent_calls_and_survives_an_engine_failure():
    image = np.zeros((30, 40, 3), np.uint8)
    sam = BoxSam()
    segmenter = BatchedSegmenter(sam)

    async def many():
        prompts = [Prompt(box=(i, i, i + 10, i + 12)) for i in range(5)]
        return await asyncio.gather(*(segmenter.segment(ImageRef.of(image), [p]) for p in prompts))

    results = asyncio.run(many())
    assert sam.batches == [5] and segmenter.calls == 1
    for i, (result,) in enumerate(results):
        assert np.array_equal(result.mask_array(), rect((i, i, i + 10, i + 12), (30, 40)))

    class Broken:
        def segment(self, requests, images=None):
            raise RuntimeError("CUDA error")

    broken = BatchedSegmenter(Broken())
    (result,) = asyncio.run(broken.segment(ImageRef.of(image), [Prompt(box=(0, 0, 5, 5))]))
    assert not result.ok and "CUDA error" in result.error
    with pytest.raises(ValueError, match="ground_truth"):
        asyncio.run(segmenter.segment(ImageRef.of(image), [Prompt(box=(0, 0, 5, 5))], ground_truth={"size": [1, 1]}))


def test_a_dataset_of_only_skipped_rows_is_reported_without_scores():
    summary = summarize([{"uid": "x:0", "dataset": "d", "mode": "samr1", "skipped": "bad"}], "m", "samr1")
    assert summary["datasets"]["d"]["n"] == 0 and summary["datasets"]["d"]["n_skipped"] == 1
    assert math.isnan(summary["datasets"]["d"]["gIoU"])
