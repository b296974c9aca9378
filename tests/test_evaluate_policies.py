"""The evaluator's policies: vLLM requests built from the chat template, batched transformers generation; the SAM-R1
mode's episode."""

import asyncio
import json

import numpy as np
import pytest
from PIL import Image

from recipe.evaluate.config import EvalConfig, GenerationConfig
from recipe.evaluate.modes import MODES, NullPolicy
from recipe.evaluate.policies import (
    TransformersPolicy,
    build_policy,
    vllm_prompts,
    vllm_sampling_kwargs,
)
from recipe.evaluate.samples import EvalSample
from recipe.task.prompts import build_prompt
from reward_server.protocol import Prompt


def conversation(question, seed):
    pixels = np.random.default_rng(seed).integers(0, 255, (840, 840, 3), dtype=np.uint8)
    content = [
        {"type": "image", "image": Image.fromarray(pixels)},
        {"type": "text", "text": build_prompt("samr1", question)},
    ]
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def processor(tiny_qwen_path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_qwen_path)


def test_vllm_prompts_carry_the_chat_template_and_the_840_image(processor):
    batch = [conversation("the red cup", 0), conversation("the dog", 1)]
    prompts = vllm_prompts(processor, batch)
    for prompt, messages in zip(prompts, batch, strict=True):
        assert prompt["prompt"].count("<|vision_start|><|image_pad|><|vision_end|>") == 1
        assert prompt["prompt"].rstrip().endswith("<|im_start|>assistant")
        (image,) = prompt["multi_modal_data"]["image"]
        # Qwen2.5-VL's 28-pixel grid keeps the 840x840 image as it is (Qwen3-VL's: tests/test_tokenisation_parity.py).
        shown = messages[0]["content"][0]["image"]
        assert image.size == (840, 840) and np.array_equal(np.asarray(image), np.asarray(shown))
    assert '"the red cup"' in prompts[0]["prompt"] and '"the dog"' in prompts[1]["prompt"]


def test_sampling_settings_follow_the_mode():
    from vllm import SamplingParams

    generation = GenerationConfig()
    assert MODES["veteran"].decoding(generation).repetition_penalty == 1.1, "SAM-Veteran evaluates with 1.1"
    assert MODES["samr1"].decoding(generation).repetition_penalty == 1.0
    assert MODES["veteran"].decoding(GenerationConfig(repetition_penalty=1.3)).repetition_penalty == 1.3
    assert generation.repetition_penalty is None and generation.max_new_tokens is None, "the config is left as it is"
    params = SamplingParams(**vllm_sampling_kwargs(MODES["samr1"].decoding(GenerationConfig(repetition_penalty=1.1))))
    assert params.repetition_penalty == 1.1 and params.temperature == 0.0 and params.max_tokens == 1024


def test_transformers_policy_batches_like_one_at_a_time(tiny_qwen_path):
    cfg = EvalConfig(mode="samr1")
    cfg.model.path, cfg.model.backend = tiny_qwen_path, "transformers"
    cfg.generation.max_new_tokens = 12
    policy = build_policy(cfg, MODES["samr1"])
    assert isinstance(policy, TransformersPolicy)
    # Different prompt lengths, so the batch is left-padded.
    batch = [conversation("the red cup on the left of the table", 0), conversation("dog", 1)]
    together = asyncio.run(policy.generate(batch))
    alone = [asyncio.run(policy.generate([messages]))[0] for messages in batch]
    assert together == alone
    assert policy.seconds > 0


def test_build_policy_needs_a_model_except_for_oracle_boxes():
    assert isinstance(build_policy(EvalConfig(mode="oracle_box"), MODES["oracle_box"]), NullPolicy)
    with pytest.raises(ValueError, match=r"model\.path"):
        build_policy(EvalConfig(mode="veteran"), MODES["veteran"])
    cfg = EvalConfig(mode="samr1")
    cfg.model.path, cfg.model.backend = "/m", "tensorrt"
    with pytest.raises(ValueError, match=r"unknown model\.backend"):
        build_policy(cfg, MODES["samr1"])


@pytest.mark.parametrize("label", ["the bar", "absent", "", None])
def test_samr1_episode_sends_box_and_point_to_sam2_whatever_the_label(label):
    """SAM-R1 section 3.3: SAM2 gets the box and the reference point; the label is a format flag, not a prompt. The
    coordinates go back to the original image as ``x * W / 840``, ``y * H / 840`` (docs/conventions.md, Spaces and
    coordinates)."""
    height, width = 420, 1680
    pixels = np.zeros((height, width, 3), np.uint8)
    sample = EvalSample("d:0", "d", "the bar", np.zeros((840, 840, 3), np.uint8), pixels, np.zeros((height, width)))
    payload = {"bbox_2d": [100, 100, 600, 300], "point_2d": [350, 200]}
    if label != "absent":
        payload["label"] = label
    episode = MODES["samr1"].build(sample, EvalConfig(mode="samr1"))
    (prompt,) = episode.observe_response(f"<think>t</think><answer>{json.dumps(payload)}</answer>")
    box = (100 * width / 840, 100 * height / 840, 600 * width / 840, 300 * height / 840)
    assert prompt == Prompt(box=box, points=((350 * width / 840, 200 * height / 840),), labels=(1,))
    assert not episode.done  # waiting for SAM2's mask


def test_samr1_episode_without_a_point_ends_unsegmented():
    sample = EvalSample("d:0", "d", "q", *(np.zeros((840, 840, 3), np.uint8),) * 2, np.zeros((840, 840)))
    episode = MODES["samr1"].build(sample, EvalConfig(mode="samr1"))
    assert episode.observe_response('<think>t</think><answer>{"bbox_2d": [1, 1, 9, 9], "label": "a"}</answer>') == []
    assert episode.termination == "invalid_answer"
