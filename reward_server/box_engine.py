"""A segmenter whose mask is the prompt's box, filled: what the box alone explains, with no SAM2.

It serves through the SAM2 engine's interface (image cache, ground-truth cache, request validation, IoU and
edge-excluded IoU, logits for the next refinement step), so the pool, the client, the reward functions and the
evaluator run unchanged on it. Two uses:

- on a CPU, a reward that depends on the answer: the tiny random SAM2's masks do not follow the box, so a policy
  could never learn the tiered IoU reward from them (``make bench-learn``, ``reward_server=box``);
- in evaluation, the "box only" row: the same answers scored without SAM2, so SAM2's gain over the box shows.

The mask of a prompt is its box (pixel-edge coordinates, :func:`reward_server.masks.box_to_mask`); a prompt without
a box keeps the mask it is given (``mask_input > 0``), or none. Clicks never change a mask: refinement learns
nothing here, which is the point of a box-only baseline.
"""

from __future__ import annotations

import numpy as np
import torch

from reward_server.config import EngineConfig
from reward_server.engine import LOGIT_CLAMP, ImageFeatures, Job, SamEngine
from reward_server.masks import box_to_mask, resize_mask
from reward_server.requests import BOX_CORNER_LABELS

MASK_INPUT_SIZE = 256
"""Side of the low-res logits it returns and accepts as ``mask_input``: SAM2's at its default 1024 input, so stored
logits and refinement prompts keep one shape whichever segmenter made them."""


class BoxEngine(SamEngine):
    """The filled box as the mask, behind :class:`reward_server.engine.SamEngine`'s interface.

    Args:
        config: The engine settings; ``model`` is :data:`BOX_MODEL`, the checkpoint and SAM2's knobs are unused.
    """

    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = torch.device("cpu")
        self.mask_input_size = MASK_INPUT_SIZE
        self._init_serving()

    @property
    def input_size(self) -> None:
        return None

    def encode(self, images: list[np.ndarray]) -> list[ImageFeatures]:
        """Only the size of each image matters: its features are empty."""
        self.stats.encodes += len(images)
        empty = torch.empty(0)
        return [ImageFeatures(image_embed=empty, high_res=(), orig_hw=image.shape[:2]) for image in images]

    def predict(self, jobs: list[Job]) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor]:
        masks = [self._mask(job) for job in jobs]
        size = (self.mask_input_size, self.mask_input_size)
        # The low-res frame is the image stretched to a square, as SAM2's logits are.
        low_res = torch.stack([torch.from_numpy(resize_mask(mask, size)) for mask in masks])[:, None]
        logits = torch.where(low_res, LOGIT_CLAMP, -LOGIT_CLAMP).float()
        self.stats.decode_calls += 1
        self.stats.decoded_prompts += len(jobs)
        return masks, logits, torch.ones(len(jobs))

    @staticmethod
    def _mask(job: Job) -> np.ndarray:
        prompt, image_hw = job.prompt, job.features.orig_hw
        if tuple(prompt.token_labels[:2]) == BOX_CORNER_LABELS:
            return box_to_mask([*prompt.coords[0], *prompt.coords[1]], image_hw)
        if prompt.mask_input is not None:
            return resize_mask(prompt.mask_input[0] > 0, image_hw)
        return np.zeros(image_hw, dtype=bool)
