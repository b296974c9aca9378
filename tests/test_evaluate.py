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
from recipe.evaluate.records import RECORDS_DIR, RecordWriter, first_box_iou, read_records
from recipe.evaluate.runner import evaluate
from recipe.evaluate.samples import EvalSample, iter_samples
from recipe.evaluate.segmenter import BatchedSegmenter
from recipe.evaluate.summary import box_accuracy, markdown_table, step_curves, summarize
from recipe.task.episodes import Episode, run_episodes
from recipe.veteran.reward_formulas import PAPER
from reward_server.images import to_rgb
from reward_server.masks import decode_rle, encode_rle
from reward_server.protocol import ImageRef, Prompt, SegResult

from support.fake_sam import EngineClient

# ------------------------------------------------------------------ independent references

PAPER_COT = {"grounding_cot": PAPER.grounding_cot, "mask_cot": PAPER.mask_cot}  # the paper trains with both


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
    """LISA's gIoU (an empty union scores 1) and cIoU (``sum I / (sum U + 1e-10)``: 0 when every union is empty)."""
    ious = [i / u if u else empty for i, u in pairs]
    union = sum(u for _, u in pairs)
    return sum(ious) / len(ious), sum(i for i, _ in pairs) / union if union else 0.0


def seg_zero_overlap(pred, row):
    """Seg-Zero's evaluation.py: the GT cast to bool (ignored pixels are target); a failed answer is I = 0,
    U = |GT|; a predicted mask with an empty union is skipped (None)."""
    gt = row["target"] | row["ignore"]
    if pred is None:
        return 0, int(gt.sum())
    intersection, union = int((pred & gt).sum()), int((pred | gt).sum())
    return None if union == 0 else (intersection, union)


def seg_zero_giou_ciou(pairs):
    """Seg-Zero's calculate_iou.py over the samples evaluation.py kept."""
    kept = [pair for pair in pairs if pair is not None]
    total_u = sum(u for _, u in kept)
    ious = [i / u if u > 0 else 0 for i, u in kept]
    return float(np.mean(ious)), sum(i for i, _ in kept) / total_u if total_u > 0 else 0, len(kept)


def xywh(box):
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def coco_box_iou(box, gt_box):
    """pycocotools' bbox IoU (xywh, no crowd)."""
    return float(mask_utils.iou(np.array([xywh(box)], float), np.array([xywh(gt_box)], float), [0])[0, 0])


def tight_box(mask):
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)) if xs.size else None


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

    expected, predictions, predicted_boxes = {}, {}, {}
    for row in rows:
        if row["hw"] is None:
            continue
        pred = None
        if row["uid"] in prompts:
            (x1, y1, x2, y2), (px, py) = prompts[row["uid"]]
            hw = row["hw"]
            box = [to_original(x1, hw, 0), to_original(y1, hw, 1), to_original(x2, hw, 0), to_original(y2, hw, 1)]
            pred = click_mask(rect(box, hw), (to_original(px, hw, 0), to_original(py, hw, 1)), 1)
            predicted_boxes[row["uid"]] = box
        predictions[row["uid"]] = pred
        expected[row["uid"]] = overlap(pred, row)
        record = records[row["uid"]]
        assert (record["intersection"], record["union"]) == expected[row["uid"]], row["uid"]
        assert record["failed"] == (pred is None)

    for dataset in {row["dataset"] for row in rows}:
        pairs = [expected[r["uid"]] for r in rows if r["dataset"] == dataset and r["uid"] in expected]
        giou, ciou = giou_ciou(pairs)
        assert summary["datasets"][dataset]["gIoU"] == pytest.approx(giou, rel=1e-12)
        assert summary["datasets"][dataset]["cIoU"] == pytest.approx(ciou, rel=1e-12)
        assert summary["datasets"][dataset]["n"] == len(pairs)
        # SAM-R1's Table 5 metric: the answer's box against the target's tight box, a failed answer a miss.
        boxes = [r for r in rows if r["dataset"] == dataset and r["uid"] in expected and r["target"].any()]
        hits = [
            r["uid"] in predicted_boxes and coco_box_iou(predicted_boxes[r["uid"]], tight_box(r["target"])) > 0.5
            for r in boxes
        ]
        assert summary["datasets"][dataset]["n_box"] == len(boxes)
        accuracy = summary["datasets"][dataset]["box_acc"]
        assert accuracy == pytest.approx(np.mean(hits)) if hits else math.isnan(accuracy)
    assert any(u == 0 for _, u in expected.values()), "an empty union must be covered"
    assert summary["datasets"]["edge_test"]["n_skipped"] == 1
    assert summary["datasets"]["edge_test"]["gIoU"] == 1.0
    assert "undecodable image" in records["edge_test:1"]["skipped"]
    assert len(sam.prompts) == len(prompts), "SAM2 is called for valid answers only"

    # Seg-Zero's convention on the same answers: ignored pixels are target, the empty union is dropped.
    cfg = config(tmp_path / "seg_zero", eval_files, "samr1")
    cfg.metrics.convention = "seg_zero"
    seg_zero = evaluate(cfg, policy=ScriptedPolicy(scripts), engine=BoxSam())
    for dataset in {row["dataset"] for row in rows}:
        pairs = [seg_zero_overlap(predictions[r["uid"]], r) for r in rows if r["dataset"] == dataset and r["hw"]]
        giou, ciou, n = seg_zero_giou_ciou(pairs)
        assert seg_zero["datasets"][dataset]["gIoU"] == pytest.approx(giou, rel=1e-12, nan_ok=True)
        assert seg_zero["datasets"][dataset]["cIoU"] == pytest.approx(ciou, rel=1e-12)
        assert seg_zero["datasets"][dataset]["n"] == n
        assert seg_zero["datasets"][dataset]["n_dropped"] == len(pairs) - n
    # The failed answer on the empty target: I = 0, U = 0, scored 0 (LISA: 1); empty-union drops are in test_metrics.
    assert seg_zero["datasets"]["edge_test"]["gIoU"] == 0.0 and seg_zero["datasets"]["edge_test"]["n"] == 1
    assert seg_zero["convention"] == "seg_zero"
    assert seg_zero["datasets"]["reasonseg_val"]["cIoU"] != summary["datasets"]["reasonseg_val"]["cIoU"]


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
        assert summary["datasets"][dataset]["cIoU"] == pytest.approx(ciou, rel=1e-12)
        assert summary["datasets"][dataset]["n_failed"] == 0
        assert summary["datasets"][dataset]["box_acc"] == 1.0, "the oracle's box is the GT box"


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
    episodes = [Episode(s.question, s.model_image, max_steps=3, segment_image=s.image, **PAPER_COT) for s in samples]
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
            assert entry["steps"][step]["cIoU"] == pytest.approx(ciou, rel=1e-12)
            # Terminated by step k: the model answered (null, null) on the mask of step k or earlier, i.e. after at
            # most k refinement clicks (a stop on the grounding mask counts at step 0).
            stopped = sum(
                e.termination == "stop" and sum(st.result is not None for st in e.steps[1:]) <= step for _, e in members
            )
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
    # The first sample stopped on its grounding mask: SAM-Veteran's Figure 3 counts it terminated at step 0.
    assert [point["terminated"] for point in curve] == [pytest.approx(1 / 3), pytest.approx(1 / 3)]


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


def test_segmenter_carries_the_request_flags_to_the_engine():
    class Recording(BoxSam):
        def __init__(self):
            super().__init__()
            self.requests = []

        def segment(self, requests, images=None, ground_truths=None):
            self.requests += requests
            return super().segment(requests, images, ground_truths)

    image, sam = ImageRef.of(np.zeros((30, 40, 3), np.uint8)), Recording()
    segmenter = BatchedSegmenter(sam)

    async def both():
        prompt = Prompt(box=(0, 0, 5, 5))
        return await asyncio.gather(
            segmenter.segment(image, [prompt]),
            segmenter.segment(image, [prompt], return_logits=True, return_edge_iou=True),
        )

    asyncio.run(both())
    assert [(r.return_logits, r.return_edge_iou) for r in sam.requests] == [(False, False), (True, True)]


def test_a_dataset_of_only_skipped_rows_is_reported_without_scores():
    summary = summarize([{"uid": "x:0", "dataset": "d", "mode": "samr1", "skipped": "bad"}], "m", "samr1")
    assert summary["datasets"]["d"]["n"] == 0 and summary["datasets"]["d"]["n_skipped"] == 1
    assert math.isnan(summary["datasets"]["d"]["gIoU"])


def test_box_accuracy_is_pycocotools_box_iou_above_one_half():
    """SAM-R1's Table 5 metric from records: the first step's box against the GT box, IoU > 0.5; no box is a miss."""
    rng = np.random.default_rng(0)
    records, hits = [], []
    for index in range(200):
        gt_box = [float(v) for v in sorted(rng.uniform(0, 300, 2))] + [float(v) for v in sorted(rng.uniform(0, 300, 2))]
        gt_box = [gt_box[0], gt_box[2], gt_box[1] + 1, gt_box[3] + 1]
        jitter = rng.normal(0, 25, 4)
        box = [gt_box[0] + jitter[0], gt_box[1] + jitter[1], gt_box[2] + abs(jitter[2]) + 1, gt_box[3] + jitter[3]]
        box[3] = max(box[3], box[1] + 1)
        prompt = None if index % 9 == 0 else {"box": box, "points": [], "labels": []}
        steps = [{"prompt": prompt}] if index % 13 else []
        gt = None if index % 17 == 0 else gt_box
        records.append({"box_iou": first_box_iou(steps, gt)})
        if gt is not None:
            hits.append(bool(steps) and prompt is not None and coco_box_iou(box, gt) > 0.5)
    result = box_accuracy(records)
    assert result["n_box"] == len(hits) < len(records)
    assert 0.2 < np.mean(hits) < 0.8, "the draw must straddle the threshold"
    assert result["box_acc"] == np.mean(hits)


def test_every_table_states_its_convention(eval_files, tmp_path):
    files = eval_files[:-1]
    summaries = []
    for convention in ("lisa", "seg_zero"):
        cfg = config(tmp_path / convention, files, "oracle_box")
        cfg.metrics.convention = convention
        summaries.append(evaluate(cfg, engine=BoxSam()))
    table = markdown_table(summaries)
    rows = [line for line in table.splitlines() if line.startswith("| oracle_box")]
    assert rows[0].split(" | ")[1] == "lisa" and rows[1].split(" | ")[1] == "seg_zero"
    assert "ignore pixels are target" in table and "ignore pixels excluded" in table
    assert "box acc@0.5" in table
