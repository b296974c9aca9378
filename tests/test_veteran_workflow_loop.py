"""The on-policy workflow loop: model turns (mask 1), overlay turns (mask 0), images per turn, termination."""

import asyncio
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from data_prep.synthetic import synthetic_refer_parquet
from recipe.task.overlay import overlay_mask
from recipe.verl_runtime.compose import compose_recipe
from recipe.veteran import workflow_loop
from reward_server.images import to_rgb

from support.agent_loops import ScriptedServer, instantiate_agent_loop
from support.fake_sam import FakeSam
from support.paper_prompts import (
    ANSWER_ONLY_GROUNDING,
    ANSWER_ONLY_REFINEMENT,
    FIGURE5_GROUNDING,
    FIGURE5_REFINEMENT,
)

pytestmark = pytest.mark.slow


def answer(payload: dict) -> str:
    return f"<think>t</think><answer>{json.dumps(payload)}</answer>"


def growing_mask(n: int) -> np.ndarray:
    """A larger mask at each SAM2 call, so each overlay differs."""
    mask = np.zeros((840, 840), bool)
    mask[100 : 200 + 100 * n, 100:500] = True
    return mask


@pytest.fixture(scope="module")
def row_and_tools(tmp_path_factory, tiny_qwen_path):
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    root = tmp_path_factory.mktemp("workflow")
    out = synthetic_refer_parquet(root, root / "grounding.parquet", "veteran", num_images=3, limit=1)
    tokenizer, processor = hf_tokenizer(tiny_qwen_path), hf_processor(tiny_qwen_path)
    config = OmegaConf.create({"data": {"filter_overlong_prompts": False}})
    return RLHFDataset(str(out), tokenizer, config.data, processor=processor)[0], tokenizer, processor


def run_workflow(
    row_and_tools,
    texts,
    monkeypatch,
    max_steps=3,
    response_length=4096,
    sampling=None,
    versioned=False,
    config=None,
    priority=None,
):
    """One workflow episode on the row; ``config`` (a recipe config) replaces the minimal one built here."""
    row, tokenizer, processor = row_and_tools
    config = config or OmegaConf.create(
        {
            "actor_rollout_ref": {
                "model": {"path": tokenizer.name_or_path},
                "rollout": {"prompt_length": 1300, "response_length": response_length},
            },
            "data": {},
            "reward_server": {"pool": {"name": "unused"}},
            "veteran": {"reward": {}, "workflow": {"max_steps": max_steps}},
        }
    )
    sam = FakeSam(growing_mask, iou=0.5, edge_iou=lambda n: 0.4 + 0.1 * n)
    server = ScriptedServer(tokenizer, texts, versioned=versioned)
    monkeypatch.setattr(workflow_loop, "get_sam_client", lambda _: sam)

    async def run():
        loop = instantiate_agent_loop(config, "veteran_workflow", server, tokenizer, processor)
        extra = {} if priority is None else {"priority": priority}
        return await loop.run(sampling or {"temperature": 1.0}, **dict(row), **extra)

    return asyncio.run(run()), server, sam, row, processor


def test_turns_tokens_masks_and_images(row_and_tools, monkeypatch):
    box = answer({"bbox_2d": [100, 100, 500, 300]})
    click = answer({"pos_point": [300, 350], "neg_point": None})
    stop = answer({"pos_point": None, "neg_point": None})
    output, server, sam, row, processor = run_workflow(row_and_tools, [box, click, stop], monkeypatch)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    info = output.extra_fields["reward_extra_info"]
    assert info["stopped"] == 1 and info["turns"] == 3 and len(sam.prompts) == 2
    assert sam.edge_iou_asked == [True, True]  # the rewards score each step's edge-excluded IoU
    # The images of each turn: the plain image, then the overlay of the latest mask, appended in order.
    image = to_rgb(row["raw_prompt"][0]["content"][0]["bytes"])
    assert [len(call["images"]) for call in server.calls] == [1, 2, 3]
    for turn, call in enumerate(server.calls[1:], start=1):
        mask = np.zeros((840, 840), bool)
        mask[100 : 200 + 100 * turn, 100:500] = True
        assert np.array_equal(np.asarray(call["images"][-1]), overlay_mask(image, mask))
        assert sum(token == pad for token in call["prompt_ids"]) == 900 * (turn + 1)
    # Masks: model tokens are 1, the appended overlay turns (900 image tokens each) are 0.
    response, mask = np.array(output.response_ids), np.array(output.response_mask)
    assert len(response) == len(mask) and (response[mask == 1] != pad).all()
    assert (response[mask == 0] == pad).sum() == 1800 and len(output.multi_modal_data["images"]) == 3
    model_tokens = [len(processor.tokenizer.encode(t, add_special_tokens=False)) + 1 for t in (box, click, stop)]
    assert mask.sum() >= sum(model_tokens) - 3  # merges may re-attach the end-of-turn token to the context
    assert server.calls[1]["sampling_params"]["max_tokens"] == 4096 - len(server.calls[1]["prompt_ids"]) + len(
        server.calls[0]["prompt_ids"]
    )


def test_stops_at_max_steps(row_and_tools, monkeypatch):
    box = answer({"bbox_2d": [100, 100, 500, 300]})
    click = answer({"pos_point": [300, 350], "neg_point": None})
    output, server, sam, *_ = run_workflow(row_and_tools, [box, click], monkeypatch, max_steps=1)
    assert len(server.calls) == 2 and len(sam.prompts) == 2
    assert (
        output.extra_fields["reward_extra_info"]["stopped"] == 0
        and output.extra_fields["reward_extra_info"]["failure"] == ""
    )


def test_a_turn_that_does_not_fit_ends_the_episode(row_and_tools, monkeypatch):
    box = answer({"bbox_2d": [100, 100, 500, 300]})
    output, server, *_ = run_workflow(row_and_tools, [box], monkeypatch, response_length=600)
    assert len(server.calls) == 1 and output.extra_fields["reward_extra_info"]["failure"] == "length"
    assert len(output.response_mask) < 600 and all(output.response_mask)  # the overlay turn was not committed


def test_log_probs_and_weight_versions_follow_the_turns(row_and_tools, monkeypatch):
    """verl's trainer reads both: the rollout's log-probs per response token, the versions per trajectory."""
    box = answer({"bbox_2d": [100, 100, 500, 300]})
    click = answer({"pos_point": [300, 350], "neg_point": None})
    stop = answer({"pos_point": None, "neg_point": None})
    sampling = {"temperature": 1.0, "logprobs": True}
    output, server, *_ = run_workflow(row_and_tools, [box, click, stop], monkeypatch, sampling=sampling, versioned=True)
    assert len(server.calls) == 3
    assert output.extra_fields["min_global_steps"] == 1 and output.extra_fields["max_global_steps"] == 3
    mask, log_probs = np.array(output.response_mask), np.array(output.response_logprobs)
    assert len(log_probs) == len(mask)
    assert (log_probs[mask == 0] == 0).all()  # the overlay turns were not sampled
    # Each model turn carries its own call's log-probs, in order (the turn's end token may merge into the context).
    runs = [int(-value) for value in log_probs[mask == 1]]
    assert sorted(set(runs)) == [1, 2, 3] and runs == sorted(runs)

    without, *_ = run_workflow(row_and_tools, [box, stop], monkeypatch)
    assert without.response_logprobs is None and "min_global_steps" not in without.extra_fields


def test_full_determinism_fixes_request_ids_as_verls_single_turn_loop(row_and_tools, monkeypatch):
    """The rollout seeds sampling from the request id; under ``full_determinism`` verl's single-turn loop fixes it by
    the sample's priority, and the workflow fixes each turn's the same way (distinct turns, repeated across runs)."""
    row, tokenizer, processor = row_and_tools
    box, stop = answer({"bbox_2d": [100, 100, 500, 300]}), answer({"pos_point": None, "neg_point": None})
    rollout = {"prompt_length": 1300, "response_length": 4096, "full_determinism": True}
    config = OmegaConf.create(
        {
            "actor_rollout_ref": {"model": {"path": tokenizer.name_or_path}, "rollout": rollout},
            "data": {},
            "reward_server": {"pool": {"name": "unused"}},
            "veteran": {"reward": {}, "workflow": {"max_steps": 3}},
        }
    )
    runs = [run_workflow(row_and_tools, [box, stop], monkeypatch, config=config, priority=7)[1] for _ in range(2)]
    ids = [[call["request_id"] for call in server.calls] for server in runs]
    assert ids[0] == ids[1] and len(set(ids[0])) == 2

    verl_server = ScriptedServer(tokenizer, box)

    async def single_turn():
        loop = instantiate_agent_loop(config, "single_turn_agent", verl_server, tokenizer, processor)
        return await loop.run({"temperature": 1.0}, priority=7, **dict(row))

    asyncio.run(single_turn())
    (verl_id,) = [call["request_id"] for call in verl_server.calls]
    assert ids[0][0].startswith(verl_id + "-")  # verl's id for the sample, then the turn

    config.actor_rollout_ref.rollout.full_determinism = False
    fresh = [run_workflow(row_and_tools, [box, stop], monkeypatch, config=config, priority=7)[1] for _ in range(2)]
    first, second = ([call["request_id"] for call in server.calls] for server in fresh)
    assert not set(first) & set(second)  # without it, every request is new


def last_user_text(tokenizer, prompt_ids) -> str:
    """The text part of the prompt's last user turn (Qwen2.5-VL's template puts it after the image)."""
    shown = tokenizer.decode(prompt_ids)
    return shown.rsplit("<|vision_end|>", 1)[1].split("<|im_end|>", 1)[0]


def with_tags(payload: dict, reasoning: bool) -> str:
    body = f"<answer>{json.dumps(payload)}</answer>"
    return f"<think>t</think>{body}" if reasoning else body


@pytest.mark.parametrize(
    ("ablation", "grounding_prompt", "refinement_prompt", "cot"),
    [
        (None, FIGURE5_GROUNDING, FIGURE5_REFINEMENT, (True, True)),
        ("no_cot", ANSWER_ONLY_GROUNDING, ANSWER_ONLY_REFINEMENT, (False, False)),
        ("no_mask_cot", FIGURE5_GROUNDING, ANSWER_ONLY_REFINEMENT, (True, False)),
    ],
)
def test_the_cot_ablations_set_every_turns_prompt_and_tag_rule(
    row_and_tools, monkeypatch, ablation, grounding_prompt, refinement_prompt, cot
):
    """Under Table 6's ablations (composed as training composes them), the first turn's prompt follows
    ``grounding_cot`` and the refinement turns' follow ``mask_cot``, and each turn is graded by the matching tag rule:
    the formatting reward's +1 for the tags (section 3.2) goes to the format that turn asked for."""
    row, tokenizer, _ = row_and_tools
    overrides = [f"actor_rollout_ref.model.path={tokenizer.name_or_path}"]
    config = compose_recipe("veteran", [*overrides, *([f"+veteran_ablation={ablation}"] if ablation else [])])
    box, stop = {"bbox_2d": [100, 100, 500, 300]}, {"pos_point": None, "neg_point": None}
    asked = [with_tags(box, cot[0]), with_tags(stop, cot[1])]
    other = [with_tags(box, not cot[0]), with_tags(stop, not cot[1])]
    output, server, *_ = run_workflow(row_and_tools, asked, monkeypatch, config=config)
    question = row["extra_info"]["question"]
    assert len(server.calls) == 2
    assert last_user_text(tokenizer, server.calls[0]["prompt_ids"]) == grounding_prompt.replace("{Question}", question)
    assert last_user_text(tokenizer, server.calls[1]["prompt_ids"]) == refinement_prompt.replace("{Question}", question)
    # The first turn still shows the row's image.
    image = to_rgb(row["raw_prompt"][0]["content"][0]["bytes"])
    assert np.array_equal(np.asarray(server.calls[0]["images"][0]), image)
    # The same answers in the other tag format: same boxes and clicks, one tag reward less on each of the 2 turns.
    mismatched, *_ = run_workflow(row_and_tools, other, monkeypatch, config=config)
    info, worse = output.extra_fields["reward_extra_info"], mismatched.extra_fields["reward_extra_info"]
    assert info["stopped"] == worse["stopped"] == 1 and info["turns"] == worse["turns"] == 2
    assert info["score"] - worse["score"] == pytest.approx(config.veteran.reward.format_reward)
