"""The ``sam_image`` reward manager on verl's own DataProto, with the real Qwen2.5 tokenizer.

References: the response text the rows were built from, the row's image object, and a copy of the dataset's
``extra_info`` taken before scoring (verl shares that dict between the n rollouts of a prompt).
"""

import asyncio
import copy
import io

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from verl import DataProto

from recipe.tiny_vlm import build_qwen2_5_tokenizer
from recipe.verl_runtime.reward_manager import SamImageRewardManager

RESPONSES = [
    '<think>the cup</think><answer>{"bbox_2d": [1, 2, 30, 40]}</answer>',
    '<think>left</think><answer>{"bbox_2d": [5, 6, 70, 80]}</answer>',
]
RESPONSE_LENGTH = 48


@pytest.fixture(scope="module")
def tokenizer():
    return build_qwen2_5_tokenizer()


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buffer, format="PNG")
    return buffer.getvalue()


def rollouts(tokenizer, image_parts: list[dict | None], extra_info: dict) -> DataProto:
    """One row per response, right-padded as verl's agent loop pads them, all sharing ``extra_info``."""
    prompt = torch.tensor([tokenizer.encode("Where is the cup?")])
    rows = []
    for text, image_part in zip(RESPONSES, image_parts, strict=True):
        ids = tokenizer.encode(text)
        response = torch.full((1, RESPONSE_LENGTH), tokenizer.pad_token_id)
        response[0, : len(ids)] = torch.tensor(ids)
        mask = torch.zeros(1, RESPONSE_LENGTH, dtype=torch.long)
        mask[0, : len(ids)] = 1
        content = [{"type": "text", "text": "Where is the cup?"}]
        if image_part is not None:
            content.insert(0, image_part)
        rows.append(
            DataProto.from_dict(
                tensors={
                    "prompts": prompt,
                    "responses": response,
                    "attention_mask": torch.cat([torch.ones_like(prompt), mask], dim=1),
                },
                non_tensors={
                    "data_source": np.array(["refcocog_train"], dtype=object),
                    "reward_model": np.array([{"ground_truth": {"mask": "rle"}}], dtype=object),
                    "extra_info": np.array([extra_info], dtype=object),
                    "raw_prompt": np.array([[{"role": "user", "content": content}]], dtype=object),
                },
            )
        )
    return DataProto.concat(rows)


def score_each(tokenizer, data: DataProto) -> tuple[list[dict], list[dict]]:
    """Runs the manager on every row, as verl's reward loop does; returns its results and what compute_score got."""
    received = []

    async def compute_score(**kwargs):
        received.append(kwargs)
        return {"score": float(len(received)), "iou": 0.5}

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        manager = SamImageRewardManager(OmegaConf.create({}), tokenizer, compute_score)
        results = [loop.run_until_complete(manager.run_single(data[i : i + 1])) for i in range(len(data))]
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return results, received


def test_each_rollout_gets_its_prompts_image_and_the_shared_extra_info_stays_untouched(tokenizer):
    shared = {"question": "the cup", "key": "refcocog/train/7", "task": "samr1"}
    before = copy.deepcopy(shared)
    pictured = Image.open(io.BytesIO(_png((200, 10, 10))))
    parts = [{"type": "image", "bytes": _png((10, 200, 10))}, {"type": "image", "image": pictured}]
    results, received = score_each(tokenizer, rollouts(tokenizer, parts, shared))

    assert shared == before, "the dict the n rollouts share must not change"
    assert received[0]["extra_info"]["image"] is parts[0]["bytes"]
    assert received[1]["extra_info"]["image"] is pictured
    for got, text in zip(received, RESPONSES, strict=True):
        info = got["extra_info"]
        assert info is not shared and {key: info[key] for key in before} == before
        assert got["solution_str"] == text
        assert got["data_source"] == "refcocog_train" and got["ground_truth"] == {"mask": "rle"}
    assert received[0]["extra_info"] is not received[1]["extra_info"]
    assert [result["reward_score"] for result in results] == [1.0, 2.0]
    assert results[0]["reward_extra_info"] == {"score": 1.0, "iou": 0.5}


def test_a_prompt_without_an_image_passes_none(tokenizer):
    shared = {"question": "the cup"}
    _, received = score_each(tokenizer, rollouts(tokenizer, [None, None], shared))
    assert [got["extra_info"]["image"] for got in received] == [None, None]
    assert shared == {"question": "the cup"}
