"""Several objects or none through the shared episodes: the workflow's union and click routing, evaluation on
gRefCOCO rows (records, gRefCOCO's metrics, the table), ``make infer`` with several masks and with "no object".

The segmenter is the box engine (a mask is its prompt's filled box), so the reference masks are the objects' tight
boxes at the original resolution, computed here from the release's own annotations with pycocotools.
"""

import asyncio
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data_prep import __main__ as cli
from data_prep.synthetic import write_grefcoco_dataset
from recipe.evaluate.config import EvalConfig
from recipe.evaluate.infer import describe, segment, write_outputs
from recipe.evaluate.records import read_records
from recipe.evaluate.runner import evaluate
from recipe.evaluate.summary import markdown_table
from recipe.task.episodes import NO_TARGET, Episode, route_click, run_episodes
from recipe.task.panels import OBJECT_COLORS, draw_step
from reward_server.box_engine import BoxEngine
from reward_server.config import BOX_MODEL, EngineConfig
from reward_server.masks import box_to_mask, decode_rle, encode_rle

from support.fake_sam import EngineClient

A, B = [100.0, 100.0, 300.0, 300.0], [500.0, 500.0, 700.0, 600.0]


def box_engine() -> BoxEngine:
    return BoxEngine(EngineConfig(model=BOX_MODEL))


def reply(payload, think=True) -> str:
    return ("<think>t</think>" if think else "") + f"<answer>{json.dumps(payload)}</answer>"


class Recording(EngineClient):
    """The box engine behind the client, keeping every prompt it was sent."""

    def __init__(self):
        super().__init__(box_engine())
        self.sent = []

    async def segment(self, image, prompts, *args, **kwargs):
        self.sent.append(list(prompts))
        return await super().segment(image, prompts, *args, **kwargs)


class Script:
    """Answers every episode's n-th turn with ``answers[n]``."""

    seconds = 0.0

    def __init__(self, *answers):
        self.answers, self.turn = answers, 0

    async def generate(self, batch):
        self.turn += 1
        return [self.answers[min(self.turn, len(self.answers)) - 1] for _ in batch]


def workflow(truth=None, **kwargs) -> Episode:
    image = np.zeros((840, 840, 3), np.uint8)
    return Episode("the two shapes", image, truth, grounding_cot=True, mask_cot=True, objects=True, **kwargs)


# ------------------------------------------------------------------ the workflow


def test_a_click_goes_to_the_object_it_lands_on_else_the_smallest_box_holding_it_else_the_nearest():
    masks = [box_to_mask(A, (840, 840)), box_to_mask(B, (840, 840))]
    big = [0.0, 0.0, 800.0, 800.0]
    assert route_click((150, 150), masks, [A, B]) == 0
    assert route_click((600, 550), masks, [A, B]) == 1
    empty = [np.zeros((840, 840), bool)] * 3
    assert route_click((600, 550), empty, [big, B, A]) == 1  # two boxes hold it: the smaller one
    assert route_click((350, 380), empty, [A, B]) == 0  # in neither: 94 px from A's corner, 192 px from B's
    assert route_click((480, 480), empty, [A, B]) == 1


def test_the_workflow_segments_every_box_shows_their_union_and_refines_the_clicked_object():
    gt = box_to_mask(A, (840, 840)) | box_to_mask(B, (840, 840))
    episode = workflow(encode_rle(gt), max_steps=2)
    sam = Recording()
    answers = (reply([{"bbox_2d": A}, {"bbox_2d": B}]), reply({"pos_point": None, "neg_point": [650, 550]}))
    asyncio.run(run_episodes([episode], Script(*answers, reply({"pos_point": None, "neg_point": None})), sam))
    grounding, refinement, stop = episode.steps
    assert [p.box for p in grounding.prompts] == [tuple(A), tuple(B)] and sam.sent[0] == grounding.prompts
    assert np.array_equal(grounding.result.mask_array(), gt) and grounding.result.iou == 1.0
    (prompt,) = refinement.prompts  # the negative click lies on B: only B is refined, with its box and logits
    assert prompt.box == tuple(B) and prompt.points == ((650.0, 550.0),) and prompt.labels == (0,)
    assert np.array_equal(prompt.mask_input, grounding.results[1].logits)
    assert episode.termination == "stop" and stop.prompts == []


def test_none_ends_the_workflow_with_no_prompt_and_the_papers_episode_reads_one_box():
    episode = workflow()
    asyncio.run(run_episodes([episode], Script(reply([])), Recording()))
    assert episode.termination == NO_TARGET and episode.final is None and episode.steps[0].prompts == []
    single = Episode("one", np.zeros((840, 840, 3), np.uint8), grounding_cot=True, mask_cot=True)
    asyncio.run(run_episodes([single], Script(reply([{"bbox_2d": A}])), Recording()))
    assert single.termination == "invalid_grounding"  # a list is not the papers' answer


# ------------------------------------------------------------------ evaluation on gRefCOCO rows


@pytest.fixture(scope="module")
def grefcoco_eval(tmp_path_factory):
    """gRefCOCO val rows (two images: a two-object, a one-object and a no-target expression each) and each row's
    objects' tight boxes at the original resolution, from the release's annotations."""
    root = tmp_path_factory.mktemp("grefcoco_eval")
    release = write_grefcoco_dataset(root, num_images=6)
    out = root / "grefcoco_val.parquet"
    args = ["grefcoco", "--root", str(release.root), "--image-root", str(release.image_root), "--split", "val"]
    assert cli.main([*args, "--out", str(out), "--workers", "1"]) == 0
    instances = json.loads((release.root / "instances.json").read_text())
    refs = {ref["ref_id"]: ref for ref in json.loads((release.root / "grefs(unc).json").read_text())}
    expected = []
    for row in pq.read_table(out).to_pylist():
        ref = refs[row["extra_info"]["ref_id"]]
        image = next(i for i in instances["images"] if i["id"] == ref["image_id"])
        hw = (image["height"], image["width"])
        objects = [a for a in instances["annotations"] if a["id"] in ref["ann_id"] and not a["iscrowd"]]
        masks = [mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], *hw)).sum(axis=2) > 0 for a in objects]
        boxes = [
            [float(v) for v in (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)] for ys, xs in map(np.nonzero, masks)
        ]
        union = np.logical_or.reduce(masks) if masks else np.zeros(hw, bool)
        expected.append({"question": row["extra_info"]["question"], "boxes": boxes, "target": union, "hw": hw})
    return out, expected


def test_oracle_boxes_on_grefcoco_give_relas_metrics(grefcoco_eval, tmp_path):
    path, rows = grefcoco_eval
    cfg = EvalConfig(mode="oracle_box", output_dir=str(tmp_path / "run"), report=False)
    cfg.data.files = [str(path)]
    summary = evaluate(cfg, engine=box_engine())["datasets"]["grefcoco_val"]
    ious, intersections, unions = [], 0, 0
    for row in rows:
        if not row["boxes"]:  # the oracle says "none" exactly when there is nothing: ReLA's TP, IoU 1
            ious.append(1.0)
            continue
        predicted = np.logical_or.reduce([box_to_mask(box, row["hw"]) for box in row["boxes"]])
        i, u = int((predicted & row["target"]).sum()), int((predicted | row["target"]).sum())
        ious.append(i / u)
        intersections, unions = intersections + i, unions + u
    assert summary["gIoU"] == pytest.approx(np.mean(ious)) and summary["cIoU"] == pytest.approx(intersections / unions)
    assert (summary["N_acc"], summary["T_acc"], summary["n_no_target"]) == (1.0, 1.0, 2)
    assert summary["n"] == 6 and summary["n_failed"] == 0 and math.isnan(summary["box_acc"])


class ByQuestion:
    """Answers each sample by its question."""

    seconds = 0.0

    def __init__(self, answers):
        self.answers = answers

    async def generate(self, batch):
        texts = []
        for messages in batch:
            prompt = next(item["text"] for item in messages[0]["content"] if item["type"] == "text")
            texts.append(next(text for question, text in self.answers.items() if f'"{question}"' in prompt))
        return texts


def test_samr1_answers_on_grefcoco_score_each_of_relas_cases(grefcoco_eval, tmp_path):
    path, rows = grefcoco_eval
    answers = {}
    for row in rows:
        items = [
            {
                "bbox_2d": [v * 840 / s for v, s in zip(b, row["hw"][::-1] * 2, strict=True)],
                "point_2d": [1, 1],
                "label": "x",
            }
            for b in row["boxes"]
        ]
        for item in items:
            x1, y1, x2, y2 = item["bbox_2d"]
            item["point_2d"] = [(x1 + x2) / 2, (y1 + y2) / 2]
        if len(row["boxes"]) == 1:  # "none" for a target: ReLA's FP
            answers[row["question"]] = reply([])
        elif not row["boxes"] and "yellow" in row["question"]:  # a box for nothing: FN
            answers[row["question"]] = reply([{"bbox_2d": A, "point_2d": [200, 200], "label": "x"}])
        elif not row["boxes"]:  # garbage on no target: the wrong decision, never a correct none
            answers[row["question"]] = "I am not sure."
        else:
            answers[row["question"]] = reply(items)
    cfg = EvalConfig(mode="samr1", output_dir=str(tmp_path / "run"), report=False)
    cfg.data.files = [str(path)]
    summary = evaluate(cfg, policy=ByQuestion(answers), engine=box_engine())
    records = list(read_records(tmp_path / "run").values())
    decided = sorted((r["no_target"], r["said_none"], r["failed"]) for r in records)
    no_target_yellow = sum("yellow" in r["question"] for r in records if r["no_target"])
    assert decided.count((False, True, False)) == 2  # "none" on each one-object row: an empty prediction
    assert decided.count((False, False, False)) == 2  # the two-object rows
    assert decided.count((True, False, False)) == no_target_yellow
    assert decided.count((True, None, True)) == 2 - no_target_yellow
    entry = summary["datasets"]["grefcoco_val"]
    assert (entry["N_acc"], entry["T_acc"]) == (0.0, 0.5)
    table = markdown_table([summary])
    assert "N-acc" in table and "T-acc" in table and "ReLA" in table


def test_generalized_asks_every_row_for_a_list_and_none_is_an_empty_prediction_there(eval_sets, tmp_path):
    path = eval_sets / "refcocog_test.parquet"
    cfg = EvalConfig(mode="samr1", output_dir=str(tmp_path / "run"), report=False, generalized=True)
    cfg.data.files, cfg.data.limit = [str(path)], 2
    summary = evaluate(cfg, policy=Script(reply([])), engine=box_engine())["datasets"]["refcocog_test"]
    records = list(read_records(tmp_path / "run").values())
    assert all(r["termination"] == NO_TARGET and not r["failed"] and "no_target" not in r for r in records)
    assert summary["gIoU"] == 0.0 and summary["n_failed"] == 0  # LISA: I = 0, U = |GT| for the empty prediction


# ------------------------------------------------------------------ make infer


def test_infer_draws_each_object_in_its_colour_and_says_no_object(tmp_path):
    image = np.full((420, 630, 3), 90, np.uint8)
    (tmp_path / "photo.png").write_bytes(b"")
    Image.fromarray(image).save(tmp_path / "photo.png")
    answer = reply(
        [{"bbox_2d": A, "point_2d": [200, 200], "label": "a"}, {"bbox_2d": B, "point_2d": [600, 550], "label": "b"}]
    )
    overrides = ["reward_server=box", "generalized=true"]
    result = segment(tmp_path / "photo.png", "both shapes", "samr1", overrides=overrides, policy=Script(answer))
    (step,) = result.steps
    assert len(step.objects) == 2 and result.termination == "answered"
    scale = (630 / 840, 420 / 840, 630 / 840, 420 / 840)  # the model's 840 coordinates on the 630x420 original
    halves = [box_to_mask([v * f for v, f in zip(box, scale, strict=True)], (420, 630)) for box in (A, B)]
    assert [
        np.array_equal(decode_rle(item["mask"]), mask) for item, mask in zip(step.objects, halves, strict=True)
    ] == [True] * 2
    assert np.array_equal(result.mask, halves[0] | halves[1])
    written = write_outputs(result, tmp_path / "out")
    drawn = np.array(Image.open(written[0]))
    assert np.array_equal(drawn, draw_step(image, step.drawn()))
    centre_a, centre_b = drawn[60, 90], drawn[260, 390]  # inside each box, away from its click
    assert tuple(centre_a) != tuple(centre_b) and OBJECT_COLORS[0] != OBJECT_COLORS[1]

    nothing = segment(tmp_path / "photo.png", "a dog", "samr1", overrides=overrides, policy=Script(reply([])))
    assert nothing.termination == NO_TARGET and not nothing.mask.any() and nothing.failure is None
    assert "no object: the model answers that nothing in the image matches" in describe(nothing)
    write_outputs(nothing, tmp_path / "none")
    assert not np.array(Image.open(tmp_path / "none" / "mask.png")).any()


def test_the_workflow_reward_scores_the_objects_and_a_correct_none():
    from recipe.task.dataset_rows import GroundTruth, Target
    from recipe.veteran.reward_formulas import PAPER
    from recipe.veteran.task_scoring import score_workflow

    masks = [box_to_mask(box, (840, 840)) for box in (A, B)]
    both = GroundTruth.build(
        mask=encode_rle(masks[0] | masks[1]),
        objects=[Target.build(mask=encode_rle(m), box=box) for m, box in zip(masks, (A, B), strict=True)],
    )
    episode = workflow(dict(both.mask), max_steps=2)
    stop = reply({"pos_point": None, "neg_point": None})
    asyncio.run(run_episodes([episode], Script(reply([{"bbox_2d": B}, {"bbox_2d": A}]), stop), Recording()))
    scored = score_workflow(episode.steps, both, episode.termination, PAPER)
    # Grounding: format 2 + box 2 (both boxes exact) + R_SAM 1; the stop on a Good Enough union: 2 + (1 + 3) + 1.
    assert scored["score"] == pytest.approx((5 + 7) / 2) and scored["failure"] == ""

    nothing = GroundTruth.build(mask=encode_rle(np.zeros((840, 840), bool)), objects=[])
    episode = workflow(dict(nothing.mask))
    asyncio.run(run_episodes([episode], Script(reply([])), Recording()))
    scored = score_workflow(episode.steps, nothing, episode.termination, PAPER)
    assert (scored["score"], scored["failure"], scored["well_formed"]) == (5.0, "", 1.0)
    invented = workflow(dict(nothing.mask), max_steps=0)
    asyncio.run(run_episodes([invented], Script(reply([{"bbox_2d": A}])), Recording()))
    assert score_workflow(invented.steps, nothing, invented.termination, PAPER)["score"] == 2.0
