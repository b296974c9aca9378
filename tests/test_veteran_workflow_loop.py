"""The on-policy workflow loop: model turns (mask 1), overlay turns (mask 0), images per turn, termination."""

import asyncio
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from data_prep.synthetic import synthetic_refer_parquet
from recipe.common.overlay import overlay_mask
from recipe.common.smoke_setup import instantiate_agent_loop
from recipe.veteran import workflow_loop
from reward_server.images import to_rgb
from reward_server.masks import encode_rle
from reward_server.protocol import SegResult

pytestmark = pytest.mark.slow


def answer(payload: dict) -> str:
    return f"<think>t</think><answer>{json.dumps(payload)}</answer>"


class ScriptedServer:
    def __init__(self, tokenizer, texts: list[str]):
        self.tokenizer, self.texts, self.calls = tokenizer, texts, []

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **_):
        from verl.workers.rollout.replica import TokenOutput

        self.calls.append(
            {"prompt_ids": list(prompt_ids), "images": list(image_data), "max_tokens": sampling_params["max_tokens"]}
        )
        text = self.texts[min(len(self.calls) - 1, len(self.texts) - 1)]
        return TokenOutput(
            token_ids=[*self.tokenizer.encode(text, add_special_tokens=False), self.tokenizer.eos_token_id]
        )


class GrowingSam:
    """Each call returns a larger mask (so each overlay differs) with logits and an edge IoU."""

    def __init__(self):
        self.prompts = []

    async def segment(self, image, prompts, ground_truth=None, return_logits=False):
        self.prompts += list(prompts)
        mask = np.zeros((840, 840), bool)
        mask[100 : 200 + 100 * len(self.prompts), 100:500] = True
        logits = np.zeros((256, 256), np.float16)
        return [
            SegResult(mask=encode_rle(mask), score=1.0, logits=logits, iou=0.5, edge_iou=0.4 + 0.1 * len(self.prompts))
        ]


@pytest.fixture(scope="module")
def row_and_tools(tmp_path_factory, tiny_qwen_path):
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    root = tmp_path_factory.mktemp("workflow")
    out = synthetic_refer_parquet(root, root / "grounding.parquet", "veteran", num_images=3, limit=1)
    tokenizer, processor = hf_tokenizer(tiny_qwen_path), hf_processor(tiny_qwen_path)
    config = OmegaConf.create({"data": {"filter_overlong_prompts": False}})
    return RLHFDataset(str(out), tokenizer, config.data, processor=processor)[0], tokenizer, processor


def run_workflow(row_and_tools, texts, monkeypatch, max_steps=3, response_length=4096):
    row, tokenizer, processor = row_and_tools
    config = OmegaConf.create(
        {
            "actor_rollout_ref": {"rollout": {"prompt_length": 1300, "response_length": response_length}},
            "data": {},
            "reward_server": {"pool": {"name": "unused"}},
            "veteran": {"reward": {}, "workflow": {"max_steps": max_steps}},
        }
    )
    sam, server = GrowingSam(), ScriptedServer(tokenizer, texts)
    monkeypatch.setattr(workflow_loop, "get_sam_client", lambda _: sam)

    async def run():
        loop = instantiate_agent_loop(config, "veteran_workflow", server, tokenizer, processor)
        return await loop.run({"temperature": 1.0}, **dict(row))

    return asyncio.run(run()), server, sam, row, processor


def test_turns_tokens_masks_and_images(row_and_tools, monkeypatch):
    box = answer({"bbox_2d": [100, 100, 500, 300]})
    click = answer({"pos_point": [300, 350], "neg_point": None})
    stop = answer({"pos_point": None, "neg_point": None})
    output, server, sam, row, processor = run_workflow(row_and_tools, [box, click, stop], monkeypatch)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    info = output.extra_fields["reward_extra_info"]
    assert info["stopped"] == 1 and info["turns"] == 3 and len(sam.prompts) == 2
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
    assert server.calls[1]["max_tokens"] == 4096 - len(server.calls[1]["prompt_ids"]) + len(
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
