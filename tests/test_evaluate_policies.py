"""The evaluator's policies: vLLM requests built from the chat template, batched transformers generation."""

import asyncio

import numpy as np
import pytest
from PIL import Image

from recipe.common.prompts import build_prompt
from recipe.evaluate.config import EvalConfig, GenerationConfig
from recipe.evaluate.modes import MODES, NullPolicy
from recipe.evaluate.policies import (
    TransformersPolicy,
    build_policy,
    repetition_penalty,
    vllm_prompts,
    vllm_sampling_kwargs,
)


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
        assert image is messages[0]["content"][0]["image"] and image.size == (840, 840)
    assert '"the red cup"' in prompts[0]["prompt"] and '"the dog"' in prompts[1]["prompt"]


def test_sampling_settings_follow_the_mode():
    from vllm import SamplingParams

    generation = GenerationConfig()
    assert repetition_penalty(generation, MODES["veteran"]) == 1.1, "SAM-Veteran evaluates with 1.1"
    assert repetition_penalty(generation, MODES["samr1"]) == 1.0
    assert repetition_penalty(GenerationConfig(repetition_penalty=1.3), MODES["veteran"]) == 1.3
    params = SamplingParams(**vllm_sampling_kwargs(generation, 1.1))
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
