"""Pictures of training (``recipe.verl_runtime.gallery``) and the SAM2 records the reward path carries for them.

References: the answers' own JSON (what the reward must have sent SAM2), pycocotools' decoding of the recorded
masks, the drawn pixels at known places, and TransferQueue-shaped fields with a broken rollout (a counted error,
never an exception).
"""

import asyncio
import io
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from pycocotools import mask as mask_utils

import recipe.verl_runtime.trainer as trainer_module
from recipe.samr1.reward import compute_score
from recipe.task.panels import GT_COLOR, TITLE_HEIGHT
from recipe.task.prompts import first_image
from recipe.task.sam_steps import SAM_STEPS, decode_steps
from recipe.verl_runtime.gallery import GalleryConfig, choose_keys, render_rollout, rollout_from_fields
from recipe.verl_runtime.trainer import RewardMetricsTrainer
from recipe.veteran.reward_formulas import VeteranRewardConfig
from recipe.veteran.task_scoring import score_auxiliary, score_grounding
from reward_server.masks import encode_rle
from reward_server.protocol import ErrorCode, ImageRef, SegResult

from support.fake_sam import FakeSam

GT = np.zeros((840, 840), bool)
GT[100:300, 100:600] = True
MASK = np.zeros_like(GT)
MASK[150:300, 100:600] = True  # IoU 0.75 with GT
SAMR1 = '<think>the bar</think><answer>{"bbox_2d": [100, 100, 600, 300], "point_2d": [350, 200], "label": "b"}</answer>'


def coco(rle):
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def image_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_samr1_records_the_prompt_of_the_answer_and_the_mask_it_scored():
    info = asyncio.run(
        compute_score("d", SAMR1, {"mask": encode_rle(GT)}, {"image": b"img"}, sam_client=FakeSam(MASK, truth=GT))
    )
    (step,) = decode_steps(info[SAM_STEPS])
    assert step["prompt"] == {"box": [100.0, 100.0, 600.0, 300.0], "points": [[350.0, 200.0]], "labels": [1]}
    assert np.array_equal(coco(step["mask"]), MASK)
    assert step["iou"] == info["iou"] == pytest.approx(0.75) and step["error"] is None


def test_samr1_records_nothing_without_a_call_and_the_error_of_a_failed_one():
    bad = '<think>x</think><answer>{"bbox_2d": [1, 2]}</answer>'
    info = asyncio.run(compute_score("d", bad, {"mask": encode_rle(GT)}, {"image": b"img"}, sam_client=FakeSam()))
    assert decode_steps(info[SAM_STEPS]) == []
    failed = FakeSam(failure=SegResult.failure(ErrorCode.BAD_IMAGE, "corrupt"))
    info = asyncio.run(compute_score("d", SAMR1, {"mask": encode_rle(GT)}, {"image": b"img"}, sam_client=failed))
    (step,) = decode_steps(info[SAM_STEPS])
    assert step["mask"] is None and step["iou"] is None and step["error"] == str(ErrorCode.BAD_IMAGE)


def test_veteran_tasks_record_their_sam2_calls_and_the_auxiliary_clicks():
    config = VeteranRewardConfig()
    truth = {"mask": encode_rle(GT), "box": [100, 100, 600, 300]}
    grounding = '<think>x</think><answer>{"bbox_2d": [90, 110, 610, 290]}</answer>'
    sam = FakeSam(MASK, truth=GT, edge_iou=0.5)
    info = asyncio.run(score_grounding(grounding, truth, ImageRef.of(b"img"), sam, config))
    (step,) = decode_steps(info[SAM_STEPS])
    assert step["prompt"]["box"] == [90.0, 110.0, 610.0, 290.0] and step["iou"] == info["sam_iou"] == 0.5
    aux = '<think>x</think><answer>{"pos_point": [120, 130], "neg_point": null}</answer>'
    info = score_auxiliary(aux, {**truth, "false_negative": None, "false_positive": None}, config)
    (step,) = decode_steps(info[SAM_STEPS])
    assert step == {
        "prompt": {"box": None, "points": [[120.0, 130.0]], "labels": [1]},
        "mask": None,
        "iou": None,
        "error": None,
    }


def rollout_fields(steps: str | None = None, picture: np.ndarray | None = None):
    picture = np.full((840, 840, 3), 90, np.uint8) if picture is None else picture
    prompt = [{"role": "user", "content": [{"type": "image", "bytes": image_bytes(picture)}, {"type": "text"}]}]
    record = {"prompt": {"box": [100, 100, 600, 300], "points": [[350, 200]], "labels": [1]}, "mask": encode_rle(MASK)}
    info = {"score": 6.0, "iou": 0.75, "task": "grounding", SAM_STEPS: json.dumps([{**record, "iou": 0.75}])}
    if steps is not None:
        info[SAM_STEPS] = steps
    return prompt, {"ground_truth": {"mask": encode_rle(GT)}}, {"question": "the bar"}, info


def test_a_panel_shows_the_truth_then_the_recorded_mask_box_and_click():
    prompt, reward_model, extra_info, info = rollout_fields()
    rollout = rollout_from_fields("u_0_0", first_image(prompt), reward_model, extra_info, "answer", info)
    assert rollout.reward == {"score": 6.0, "iou": 0.75} and rollout.labels == {"task": "grounding"}
    panel = np.asarray(render_rollout(rollout, max_side=840))
    truth_tile, step_tile = panel[TITLE_HEIGHT : TITLE_HEIGHT + 840, :840], panel[TITLE_HEIGHT:, 846 : 846 + 840]
    # Half grey 90, half the colour, rounded half to even: magenta (172, 45, 172), green (45, 172, 45).
    assert tuple(truth_tile[200, 300]) == (172, 45, 172), "the GT filled in magenta"
    assert tuple(truth_tile[100, 300]) == GT_COLOR, "the GT outline on its top edge"
    assert tuple(step_tile[250, 300]) == (45, 172, 45), "SAM2's recorded mask in green"
    assert tuple(step_tile[120, 300]) == (90, 90, 90), "inside the GT, outside the mask: the image itself"
    assert tuple(step_tile[100, 300]) != (90, 90, 90), "the box's top edge (and the GT outline) drawn"


def test_choose_keys_spreads_over_the_batch():
    keys = [f"k{i:02d}" for i in range(10)]
    assert choose_keys(list(reversed(keys)), 3) == ["k00", "k04", "k09"]  # 0, 4.5 (rounded to even), 9
    assert choose_keys(keys[:2], 6) == keys[:2]


class FakeField(list):
    def tolist(self):
        return list(self)


class FakeResponses:
    def __init__(self, rows):
        self.rows = rows

    def to_padded_tensor(self, padding):
        width = max(len(row) for row in self.rows)
        return torch.tensor([row + [padding] * (width - len(row)) for row in self.rows])


class FakeTokenizer:
    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(int(i)) for i in ids if i)


def gallery_trainer(tmp_path, every=1):
    trainer = RewardMetricsTrainer.__new__(RewardMetricsTrainer)  # verl's workers are not needed to draw
    trainer.config = OmegaConf.create({"samrl": {"output_dir": str(tmp_path)}})
    trainer._gallery, trainer._gallery_errors, trainer.tokenizer = GalleryConfig(every, 6), 0, FakeTokenizer()
    return trainer


def test_a_broken_rollout_is_counted_and_the_rest_are_drawn(tmp_path, monkeypatch):
    good, broken = rollout_fields(), rollout_fields(steps="{not json")
    names = ("raw_prompt", "reward_model", "extra_info")
    rows = {name: [good[i], broken[i]] for i, name in enumerate(names)}
    rows["extra_fields"] = [{"reward_extra_info": good[3]}, {"reward_extra_info": broken[3]}]

    def kv_batch_get(keys, partition_id, select_fields):
        # As TransferQueue answers: a NonTensorStack (tolist) for most fields, tensordict's LinkedList for the prompt.
        data = {name: FakeField(rows[name]) for name in select_fields if name != "responses"}
        data["raw_prompt"] = list(rows["raw_prompt"])
        return {**data, "responses": FakeResponses([[5, 6], [7]])}

    monkeypatch.setattr(trainer_module.tq, "kv_batch_get", kv_batch_get)
    metrics = gallery_trainer(tmp_path)._draw_gallery("train", ["a_0_0", "b_0_0"], 4)
    assert metrics == {"gallery/rollouts": 1.0, "gallery/errors": 1.0}
    page = (tmp_path / "gallery" / "step_000004" / "index.html").read_text()
    assert "1 rollout(s) could not be drawn" in page and 'src="a_0_0.png"' in page
    (record,) = [json.loads(line) for line in (tmp_path / "gallery" / "step_000004" / "rollouts.jsonl").open()]
    assert record["response"] == "5 6" and np.array_equal(coco(record["truth"]), GT)
    assert "step_000004/index.html" in (tmp_path / "gallery" / "index.html").read_text()


def test_an_unreachable_store_costs_the_gallery_not_the_step(tmp_path, monkeypatch):
    def kv_batch_get(**_):
        raise ConnectionError("TransferQueue is gone")

    monkeypatch.setattr(trainer_module.tq, "kv_batch_get", kv_batch_get)
    trainer = gallery_trainer(tmp_path)
    assert trainer._draw_gallery("train", ["a_0_0"], 1) == {"gallery/rollouts": 0.0, "gallery/errors": 1.0}
    assert trainer._draw_gallery("train", ["a_0_0"], 2)["gallery/errors"] == 2.0


@pytest.mark.parametrize(("every", "steps"), [(0, []), (2, [2, 4]), (3, [3])])
def test_the_gallery_is_due_every_n_steps(every, steps):
    assert [step for step in range(1, 5) if GalleryConfig(every_n_steps=every).due(step)] == steps


@pytest.mark.parametrize("bad", [{"every_n_steps": -1}, {"rollouts": 0}, {"max_side": 8}])
def test_bad_gallery_settings_are_refused_with_their_key(bad):
    with pytest.raises(ValueError, match=f"samrl.gallery.{next(iter(bad))}"):
        GalleryConfig(**bad)


def test_preflight_names_a_misspelt_or_bad_gallery_key():
    from recipe.verl_runtime.preflight import check_gallery

    assert check_gallery(OmegaConf.create({"samrl": {"gallery": {"every_n_steps": 5}}})) == []
    (typo,) = check_gallery(OmegaConf.create({"samrl": {"gallery": {"every_n_step": 5}}}))
    (negative,) = check_gallery(OmegaConf.create({"samrl": {"gallery": {"rollouts": 0}}}))
    assert typo.startswith("samrl.gallery:") and "every_n_step" in typo and "samrl.gallery.rollouts" in negative
