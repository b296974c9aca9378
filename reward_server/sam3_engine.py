"""SAM 3 as the segmenter: transformers' ``Sam3TrackerModel`` behind the SAM2 engine's interface.

SAM 3's tracker takes SAM2's prompts (points with labels, boxes, a previous mask's low-res logits) on reusable image
embeddings, so it serves through :class:`reward_server.engine.SamEngine` unchanged around it: the image-embedding
cache, batching across images, request validation, ground-truth scoring, edge-excluded IoU and logits for the next
refinement step. What differs is the model's own path, taken as transformers runs it (the parity reference of
``tests/test_sam3_engine.py``):

- images are squashed to the model's square input (1008 px for ``facebook/sam3``) by ``Sam3TrackerProcessor``'s
  image processor, prompts scaled to it by the same processor;
- a box and clicks go in as labelled points, scaled by the processor (the tracker embeds the same tokens as
  from its ``input_boxes``, see :meth:`Sam3Engine.decode`);
- low-res logits are ``4 x`` the patch grid (288 px for ``facebook/sam3``, where SAM2's are 256), upsampled to the
  image bilinearly and thresholded at 0 by the processor's ``post_process_masks``.

SAM-Veteran's mask-comprehension rows store the logits of the segmenter that built them (``make data-veteran``):
build them with the SAM 3 preset to train with it, since a refinement prompt's logits must be the engine's size.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reward_server.config import EngineConfig
from reward_server.engine import Job, SamEngine, ray_gpu_ids, resolve_device

SAM3_MODEL = "sam3"
"""``engine.model`` of SAM 3's tracker from ``engine.checkpoint`` (a directory, or a hub id: ``facebook/sam3``)."""
SAM3_TINY_MODEL = "sam3_tiny"
"""``engine.model`` of a tiny random SAM 3 tracker built in process (CPU runs and tests; random weights only)."""
SAM3_MODELS = (SAM3_MODEL, SAM3_TINY_MODEL)
TINY_IMAGE_SIZE = 224
TINY_PATCH_SIZE = 14
TINY_INIT_RANGE = 0.2


def tiny_sam3(image_size: int = TINY_IMAGE_SIZE, seed: int = 0) -> tuple[Any, Any]:
    """A tiny random ``Sam3TrackerModel`` (hidden sizes 32, 2 ViT layers) and its processor at ``image_size`` px.

    Every size follows the patch grid ``s = image_size // 14`` as the real model's do (1008 // 14 = 72): feature maps
    of ``4s``, ``2s`` and ``s``, and low-res logits of ``4s``.
    """
    from transformers import (
        Sam3ImageProcessor,
        Sam3TrackerConfig,
        Sam3TrackerMaskDecoderConfig,
        Sam3TrackerModel,
        Sam3TrackerProcessor,
        Sam3TrackerPromptEncoderConfig,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )

    if image_size % TINY_PATCH_SIZE:
        raise ValueError(f"the tiny SAM 3's image size must be a multiple of {TINY_PATCH_SIZE}, got {image_size}")
    grid, hidden = image_size // TINY_PATCH_SIZE, 32
    backbone = Sam3ViTConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=TINY_PATCH_SIZE,
        window_size=max(1, grid // 2),
        global_attn_indexes=[1],
        pretrain_image_size=image_size,
    )
    vision = Sam3VisionConfig(
        backbone_config=backbone,
        fpn_hidden_size=hidden,
        scale_factors=[4.0, 2.0, 1.0],
        backbone_feature_sizes=[[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]],
    )
    config = Sam3TrackerConfig(
        vision_config=vision,
        prompt_encoder_config=Sam3TrackerPromptEncoderConfig(
            hidden_size=hidden, image_size=image_size, patch_size=TINY_PATCH_SIZE, mask_input_channels=8
        ),
        mask_decoder_config=Sam3TrackerMaskDecoderConfig(
            hidden_size=hidden,
            mlp_dim=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            iou_head_hidden_dim=hidden,
        ),
    )
    # Weights ten times transformers' default scale: at 0.02 the tiny tracker's masks barely move with the prompt
    # (1e-4 logits for a box moved by 20 px), and a test could not tell a misplaced prompt from a right one.
    for part in (config, vision, backbone, config.prompt_encoder_config, config.mask_decoder_config):
        part.initializer_range = TINY_INIT_RANGE
    torch.manual_seed(seed)
    model = Sam3TrackerModel(config)
    size, mask_size = {"height": image_size, "width": image_size}, {"height": 4 * grid, "width": 4 * grid}
    processor = Sam3TrackerProcessor(image_processor=Sam3ImageProcessor(size=size, mask_size=mask_size))
    return model, processor


def load_sam3(config: EngineConfig) -> tuple[Any, Any]:
    """The tracker and its processor that ``config`` names.

    Raises:
        ValueError: For ``sam3`` without a checkpoint, or ``sam3_tiny`` without ``allow_random_weights``.
    """
    if config.model == SAM3_TINY_MODEL:
        if not config.allow_random_weights:
            raise ValueError("reward_server.engine.model=sam3_tiny has random weights: set allow_random_weights=true")
        return tiny_sam3(config.image_size or TINY_IMAGE_SIZE, config.seed)
    if config.checkpoint is None:
        raise ValueError(
            "no SAM 3 checkpoint: set reward_server.engine.checkpoint=/path/to/sam3 (a directory of facebook/sam3, or "
            "the hub id where its cache holds it)"
        )
    from transformers import Sam3TrackerModel, Sam3TrackerProcessor

    local = Path(config.checkpoint).expanduser()
    source = str(local) if local.exists() else config.checkpoint
    return Sam3TrackerModel.from_pretrained(source), Sam3TrackerProcessor.from_pretrained(source)


class Sam3Engine(SamEngine):
    """SAM 3's tracker with the SAM2 engine's caches, batching and scoring.

    Args:
        config: ``model`` is ``sam3`` (``checkpoint`` names the weights) or ``sam3_tiny``; ``image_size`` sets the tiny
            model's input only (the real one's is its checkpoint's). ``apply_postprocessing`` is the tracker's dynamic
            multimask fallback for an unstable single mask, as for SAM2.
    """

    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = resolve_device(config.device, torch.cuda.is_available(), ray_gpu_ids(), os.environ)
        torch.manual_seed(config.seed)
        model, self.processor = load_sam3(config)
        model.mask_decoder.dynamic_multimask_via_stability = config.apply_postprocessing
        self.model = model.to(self.device).eval()
        self.mask_input_size = int(self.model.prompt_encoder.mask_input_size[0])
        self._init_serving()

    @property
    def input_size(self) -> int:
        return int(self.processor.image_processor.size["height"])

    def feature_levels(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """The tracker's three feature levels of a chunk of images, finest first, as its processor prepares them."""
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        with self._autocast():
            return list(self.model.get_image_embeddings(pixels.to(self.device)))

    @torch.inference_mode()
    def decode(self, jobs: list[Job]) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits ``(B, 1, S, S)`` (float32) and predicted IoUs ``(B,)`` for same-shape prompts.

        Every token goes in as a labelled point, a box as its two corners (labels 2 and 3): the tracker's prompt
        encoder then adds its one "not a point" token, and embeds the same tokens as from ``input_boxes`` plus
        ``input_points`` (its box path appends that token to the corners), in an order its attention does not see.
        """
        sizes = [list(job.features.orig_hw) for job in jobs]
        points = [[job.prompt.coords.tolist()] for job in jobs]
        labels = [[job.prompt.token_labels.tolist()] for job in jobs]
        inputs = self.processor(original_sizes=sizes, input_points=points, input_labels=labels, return_tensors="pt")
        embeddings = [
            torch.stack(level)
            for level in zip(*((*job.features.high_res, job.features.image_embed) for job in jobs), strict=True)
        ]
        mask_input = None
        if jobs[0].prompt.mask_input is not None:
            mask_input = torch.stack([torch.from_numpy(job.prompt.mask_input) for job in jobs]).to(self.device)
        with self._autocast():
            out = self.model(
                image_embeddings=embeddings,
                input_points=inputs["input_points"].to(self.device),
                input_labels=inputs["input_labels"].to(self.device),
                input_masks=mask_input,
                multimask_output=self.config.multimask_output,
            )
        logits, iou = out.pred_masks[:, 0].float(), out.iou_scores[:, 0].float()  # one object per image
        if self.config.multimask_output:
            best = iou.argmax(dim=1)
            rows = torch.arange(len(jobs), device=best.device)
            logits, iou = logits[rows, best][:, None], iou[rows, best][:, None]
        self.stats.decode_calls += 1
        self.stats.decoded_prompts += len(jobs)
        return logits, iou[:, 0]

    def _upsample(self, low_res: torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        """Binary masks at each prompt's image size, by the processor's ``post_process_masks`` (bilinear, > 0)."""
        rows_by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for row, size in enumerate(sizes):
            rows_by_size[size].append(row)
        masks: list[np.ndarray | None] = [None] * len(sizes)
        for size, rows in rows_by_size.items():
            upsampled = self.processor.post_process_masks(low_res[rows][:, None].cpu(), [list(size)] * len(rows))
            for row, mask in zip(rows, upsampled, strict=True):
                masks[row] = mask[0, 0].numpy()
        return masks
