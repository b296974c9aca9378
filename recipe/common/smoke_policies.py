"""Stand-ins for verl's vLLM server in CPU smoke runs: they answer ``generate`` the way an ``LLMServerManager`` does.

- :class:`TransformersServer` generates with a Hugging Face model on CPU (the tiny random Qwen2.5-VL).
- :class:`OracleServer` writes a well-formed SAM-R1 answer around the ground-truth box with a chosen amount of
  noise, so a smoke run sees the whole reward range without a trained model.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from verl.workers.rollout.replica import TokenOutput


class TransformersServer:
    """``generate`` through ``model.generate`` (sampling at the requested temperature)."""

    def __init__(self, model: Any, processor: Any, max_new_tokens: int, seed: int = 0):
        self.model, self.processor, self.max_new_tokens, self.seed = model, processor, max_new_tokens, seed

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict, image_data=None, **_):
        inputs: dict[str, torch.Tensor] = {"input_ids": torch.tensor([prompt_ids])}
        if image_data:
            inputs.update(self.processor.image_processor(images=image_data, return_tensors="pt"))
        torch.manual_seed(self.seed + zlib.crc32(request_id.encode()))  # str hash() is salted per process
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                attention_mask=torch.ones_like(inputs["input_ids"]),
                max_new_tokens=self.max_new_tokens,
                do_sample=True,
                temperature=max(float(sampling_params.get("temperature", 1.0)), 1e-3),
            )
        return TokenOutput(token_ids=output[0, len(prompt_ids) :].tolist())


def oracle_answer(box: Sequence[float], noise: float, rng: np.random.Generator, size: int = 840) -> str:
    """A SAM-R1 answer whose box is the ground truth moved by ``noise`` pixels (s.d.) and whose click is its centre."""
    x1, y1, x2, y2 = (float(np.clip(v + rng.normal(0, noise), 0, size - 1)) for v in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    answer = {"bbox_2d": [round(x1), round(y1), round(x2) + 1, round(y2) + 1]}
    answer["point_2d"] = [round((x1 + x2) / 2), round((y1 + y2) / 2)]
    answer["label"] = "the target"
    return f"<think>The question points at one object; its box follows.</think>\n<answer>{json.dumps(answer)}</answer>"


class OracleServer:
    """``generate`` answering with :func:`oracle_answer` for one sample's ground-truth box."""

    def __init__(self, tokenizer: Any, box: Sequence[float], noise: float, seed: int):
        self.tokenizer, self.box, self.noise = tokenizer, box, noise
        self.rng = np.random.default_rng(seed)

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict, **_):
        text = oracle_answer(self.box, self.noise, self.rng)
        ids = [*self.tokenizer.encode(text, add_special_tokens=False), self.tokenizer.eos_token_id]
        return TokenOutput(token_ids=ids)
