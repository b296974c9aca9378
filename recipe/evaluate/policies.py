"""The model under evaluation as a batched ``generate(messages batch) -> texts`` policy.

- ``vllm``: vLLM's offline engine on GPU, the whole batch in one ``LLM.generate`` call (SAM-Veteran's Table 11
  reports halving its time per sample with vLLM).
- ``transformers``: ``model.generate`` with left padding; runs on CPU (tests, ``make eval-smoke``) or GPU.

Both build the prompt with the checkpoint's own chat template and resize each image as verl's agent loops do
(:func:`recipe.task.prompts.as_the_model_sees`: Qwen2.5-VL keeps the 840x840 image and its 900 visual tokens,
Qwen3-VL sees it at 832x832), so the model sees what it saw in training. Each answer comes back with the chat
template's opening of the turn before it (:func:`recipe.task.prompts.template_opening`: ``<think>`` for thinking
models), as the training rewards read it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from recipe.evaluate.config import EvalConfig, GenerationConfig, ModelConfig
from recipe.evaluate.modes import Mode, NullPolicy
from recipe.task.episodes import Messages
from recipe.task.prompts import as_the_model_sees, template_opening


def chat_inputs(processor: Any, batch: Sequence[Messages]) -> list[tuple[str, list[Any]]]:
    """Each conversation as (prompt text with the chat template and generation prompt, its images in order)."""
    inputs = []
    for messages in batch:
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        shown = [item["image"] for message in messages for item in message["content"] if item["type"] == "image"]
        images = [as_the_model_sees(image, processor) for image in shown]
        inputs.append((text, images))
    return inputs


class TransformersPolicy:
    """Batched ``model.generate`` of a Hugging Face checkpoint.

    Args:
        model: Checkpoint and dtype (float32 on CPU).
        generation: Decoding settings, the mode's defaults filled in (``Mode.decoding``).
    """

    def __init__(self, model: ModelConfig, generation: GenerationConfig):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = getattr(torch, model.dtype) if device == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(model.path)
        self.processor.tokenizer.padding_side = "left"  # generation continues every row from its last token
        self.model = AutoModelForImageTextToText.from_pretrained(model.path, dtype=dtype).to(device).eval()
        self.generation, self.seconds = generation, 0.0
        self.opening = template_opening(self.processor)
        torch.manual_seed(generation.seed)

    async def generate(self, batch: Sequence[Messages]) -> list[str]:
        started = time.perf_counter()
        texts, images = zip(*chat_inputs(self.processor, batch), strict=True)
        flat_images = [image for row in images for image in row] or None
        inputs = self.processor(text=list(texts), images=flat_images, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        sampling = (
            {"do_sample": True, "temperature": self.generation.temperature, "top_p": self.generation.top_p}
            if self.generation.temperature > 0
            else {"do_sample": False}
        )
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.generation.max_new_tokens,
                repetition_penalty=self.generation.repetition_penalty,
                **sampling,
            )
        answers = self.processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        self.seconds += time.perf_counter() - started
        return [self.opening + answer for answer in answers]


def vllm_sampling_kwargs(generation: GenerationConfig) -> dict[str, Any]:
    """``vllm.SamplingParams`` keywords of the decoding settings (the mode's defaults filled in)."""
    return {
        "max_tokens": generation.max_new_tokens,
        "temperature": generation.temperature,
        "top_p": generation.top_p,
        "repetition_penalty": generation.repetition_penalty,
        "seed": generation.seed,
    }


def vllm_prompts(processor: Any, batch: Sequence[Messages]) -> list[dict[str, Any]]:
    """vLLM text prompts with their images (``multi_modal_data``), one per conversation."""
    return [
        {"prompt": text, "multi_modal_data": {"image": images}} if images else {"prompt": text}
        for text, images in chat_inputs(processor, batch)
    ]


class VLLMPolicy:
    """vLLM's offline engine (one per worker; ``tensor_parallel_size`` GPUs).

    Args:
        model: Checkpoint and engine settings.
        generation: Decoding settings, the mode's defaults filled in (``Mode.decoding``).
    """

    def __init__(self, model: ModelConfig, generation: GenerationConfig):
        from transformers import AutoProcessor
        from vllm import LLM, SamplingParams

        self.processor = AutoProcessor.from_pretrained(model.path)
        self.llm = LLM(
            model=model.path,
            dtype=model.dtype,
            tensor_parallel_size=model.tensor_parallel_size,
            gpu_memory_utilization=model.gpu_memory_utilization,
            max_model_len=model.max_model_len,
            enforce_eager=model.enforce_eager,
            seed=generation.seed,
            limit_mm_per_prompt={"image": 1},
        )
        self.params = SamplingParams(**vllm_sampling_kwargs(generation))
        self.opening = template_opening(self.processor)
        self.seconds = 0.0

    async def generate(self, batch: Sequence[Messages]) -> list[str]:
        started = time.perf_counter()
        outputs = self.llm.generate(vllm_prompts(self.processor, batch), self.params, use_tqdm=False)
        self.seconds += time.perf_counter() - started
        return [self.opening + output.outputs[0].text for output in outputs]


POLICIES: dict[str, Callable[[ModelConfig, GenerationConfig], Any]] = {
    "vllm": VLLMPolicy,
    "transformers": TransformersPolicy,
}


def build_policy(cfg: EvalConfig, mode: Mode) -> Any:
    """The configured backend's policy, or :class:`NullPolicy` for modes without a model.

    Raises:
        ValueError: When the mode needs a model and none is given, or the backend is unknown.
    """
    if not mode.needs_model:
        return NullPolicy()
    if not cfg.model.path:
        raise ValueError(
            f"mode {cfg.mode!r} needs a model: set model.path=/path/to/hf_checkpoint (make eval MODEL=...)"
        )
    backend = cfg.model.backend
    if backend == "auto":
        backend = "vllm" if torch.cuda.is_available() else "transformers"
    if backend not in POLICIES:
        raise ValueError(f"unknown model.backend {backend!r}; choose auto or one of {sorted(POLICIES)}")
    return POLICIES[backend](cfg.model, mode.decoding(cfg.generation))
