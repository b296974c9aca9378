"""SAM-Veteran's agent loops in verl, on rows built by data_prep, with a scripted LLM server and a fake SAM2."""

import asyncio
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from data_prep.synthetic import synthetic_refer_parquet
from data_prep.veteran import build_auxiliary, build_mask_comprehension
from recipe.task.overlay import overlay_mask
from recipe.task.stored_logits import decode_logits
from recipe.veteran import agent_loops
from recipe.veteran.agent_loops import PARSED_RESPONSE
from reward_server.images import to_rgb
from reward_server.masks import decode_rle

from support.agent_loops import ScriptedServer, instantiate_agent_loop
from support.fake_sam import FakeSam, GoodEveryNth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("veteran_rows")
    grounding = synthetic_refer_parquet(root, root / "grounding.parquet", "veteran", num_images=6)
    build_mask_comprehension(grounding, root / "mask.parquet", GoodEveryNth(2))
    build_auxiliary(grounding, root / "aux.parquet", seed=1)
    return {"grounding": grounding, "mask": root / "mask.parquet", "aux": root / "aux.parquet"}


def run_loop(path: Path, tiny_qwen_path: str, answer: str, sam: FakeSam, monkeypatch, row_index: int = 0, reward=None):
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tokenizer, processor = hf_tokenizer(tiny_qwen_path), hf_processor(tiny_qwen_path)
    config = OmegaConf.create(
        {
            "actor_rollout_ref": {
                "model": {"path": tiny_qwen_path},
                "rollout": {"prompt_length": 1300, "response_length": 256},
            },
            "data": {"filter_overlong_prompts": False},
            "reward_server": {"pool": {"name": "unused"}},
            "veteran": {"reward": reward or {}},
        }
    )
    dataset = RLHFDataset(str(path), tokenizer, config.data, processor=processor)
    row = dataset[row_index]
    monkeypatch.setattr(agent_loops, "get_sam_client", lambda server: sam)
    server = ScriptedServer(tokenizer, answer)

    async def run():
        loop = instantiate_agent_loop(config, row["agent_name"], server, tokenizer, processor)
        return await loop.run({"temperature": 1.0}, **row)

    image = to_rgb(row["raw_prompt"][0]["content"][0]["bytes"])
    output = asyncio.run(run())
    pads = sum(
        token == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") for token in server.calls[-1]["prompt_ids"]
    )
    assert pads == 900 and len(server.calls[-1]["images"]) == 1 and all(m == 1 for m in output.response_mask)
    return output, server, row, image


def answer(payload: dict) -> str:
    return f"<think>thinking</think><answer>{json.dumps(payload)}</answer>"


def test_grounding_loop_scores_box_sam_and_format(task_files, tiny_qwen_path, monkeypatch):
    sam = FakeSam(iou=0.7, edge_iou=0.7)
    truth_box = None
    output, server, row, image = run_loop(task_files["grounding"], tiny_qwen_path, "placeholder", sam, monkeypatch)
    truth_box = row["reward_model"]["ground_truth"]["box"]
    output, server, row, image = run_loop(
        task_files["grounding"],
        tiny_qwen_path,
        answer({"bbox_2d": [round(v) for v in truth_box]}),
        FakeSam(iou=0.7, edge_iou=0.7),
        monkeypatch,
    )
    info = output.extra_fields["reward_extra_info"]
    assert np.array_equal(np.asarray(server.calls[-1]["images"][0]), image)  # the plain 840 image
    assert info["box"] == 2 and info["sam_iou"] == 0.7 and info["format_tags"] == 1 and info["format_answer"] == 1
    assert output.reward_score == pytest.approx(1 + 1 + 0.7 + 2) == info["score"]
    # The loop leaves its parse for dynamic sampling, which reads the box from it instead of parsing again.
    assert output.extra_fields[PARSED_RESPONSE].bbox_2d().value == tuple(round(v) for v in truth_box)


def test_grounding_loop_penalises_malformed_answers_without_sam(task_files, tiny_qwen_path, monkeypatch):
    sam = FakeSam(iou=0.7, edge_iou=0.7)
    output, *_ = run_loop(task_files["grounding"], tiny_qwen_path, "no tags", sam, monkeypatch)
    assert output.reward_score == 0 and sam.prompts == [] and output.extra_fields["reward_extra_info"]["failure"]


@pytest.mark.parametrize("row_index", [0, 1])
def test_mask_comprehension_loop_shows_the_overlay_and_refines(task_files, tiny_qwen_path, monkeypatch, row_index):
    sam = FakeSam(iou=0.95, edge_iou=0.95)
    click = answer({"pos_point": [420, 420], "neg_point": None})
    output, server, row, image = run_loop(task_files["mask"], tiny_qwen_path, click, sam, monkeypatch, row_index)
    truth = row["reward_model"]["ground_truth"]
    expected = overlay_mask(image, decode_rle(truth["init_mask"]))
    assert np.array_equal(np.asarray(server.calls[-1]["images"][0]), expected)
    (refinement,) = sam.prompts  # one SAM2 call: the GT box, the click and the shown mask's stored logits
    assert refinement.box == tuple(truth["box"]) and refinement.points == ((420.0, 420.0),)
    assert refinement.labels == (1,)
    assert np.array_equal(refinement.mask_input, decode_logits(truth["init_logits"]))
    info = output.extra_fields["reward_extra_info"]
    delta = 0.95 - truth["init_edge_iou"]
    expected_case = (
        2.0
        if truth["case"] == "good_enough"
        else 1.0 + (3 if delta > 0.5 else 2 if delta > 0.1 else 1 if delta > 0 else 0)
    )
    assert info["case"] == expected_case and output.reward_score == pytest.approx(2 + 0.95 + expected_case)


def test_auxiliary_loop_rewards_decisions_and_points_without_sam(task_files, tiny_qwen_path, monkeypatch):
    sam = FakeSam(iou=0.0, edge_iou=0.0)
    rows = pq.read_table(task_files["aux"]).to_pylist()
    index = next(i for i, r in enumerate(rows) if r["reward_model"]["ground_truth"]["case"] == "both")
    truth = rows[index]["reward_model"]["ground_truth"]
    click = answer({"pos_point": truth["false_negative"]["center"], "neg_point": truth["false_positive"]["center"]})
    output, server, _, image = run_loop(task_files["aux"], tiny_qwen_path, click, sam, monkeypatch, index)
    assert np.array_equal(
        np.asarray(server.calls[-1]["images"][0]), overlay_mask(image, decode_rle(truth["init_mask"]))
    )
    info = output.extra_fields["reward_extra_info"]
    assert (info["decision"], info["point"], sam.prompts) == (2.0, 4.0, [])
    assert output.reward_score == pytest.approx(1 + 1 + 2 + 4)


def test_no_cot_ablation_swaps_in_the_answer_only_prompt_and_rule(task_files, tiny_qwen_path, monkeypatch):
    from verl.utils import hf_tokenizer

    click = '<answer>{"pos_point": null, "neg_point": null}</answer>'
    output, server, _, _ = run_loop(
        task_files["mask"],
        tiny_qwen_path,
        click,
        FakeSam(iou=0.9, edge_iou=0.9),
        monkeypatch,
        reward={"mask_cot": False},
    )
    shown = hf_tokenizer(tiny_qwen_path).decode(server.calls[-1]["prompt_ids"])
    assert "without any reasoning" in shown and "<think>" not in shown
    assert output.extra_fields["reward_extra_info"]["format_tags"] == 1  # answer-only responses meet the rule
    parsed = output.extra_fields[PARSED_RESPONSE]  # the reward's parse, under the same rule
    assert parsed.format_ok and parsed.clicks() == (None, None)
