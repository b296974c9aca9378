"""Per-token log-probabilities of responses under a Hugging Face Qwen2.5-VL, with their images (CPU smoke runs)."""

from __future__ import annotations

from typing import Any

import torch


def response_log_probs(
    model: Any, processor: Any, prompt_ids: list[int], response_ids: list[int], images: list | None
) -> torch.Tensor:
    """``log p(response_t | prompt, response_<t)`` for every response token, shape ``(len(response_ids),)``.

    The model computes Qwen2.5-VL's multimodal rotary positions itself from the image grid.
    """
    input_ids = torch.tensor([prompt_ids + response_ids])
    extra = dict(processor.image_processor(images=images, return_tensors="pt")) if images else {}
    logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **extra).logits[0]
    start = len(prompt_ids) - 1  # the logit at position i predicts token i + 1
    predictive = logits[start : start + len(response_ids)].float().log_softmax(-1)
    return predictive.gather(-1, torch.tensor(response_ids)[:, None])[:, 0]


def pad_rows(rows: list[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads 1-D tensors to ``(len(rows), width)`` and returns them with their validity mask."""
    values = torch.zeros(len(rows), width, dtype=rows[0].dtype)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for index, row in enumerate(rows):
        values[index, : len(row)] = row
        mask[index, : len(row)] = True
    return values, mask
