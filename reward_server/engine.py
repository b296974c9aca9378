"""The SAM2 engine: one encode per distinct image, many prompts per batched decoder call.

A training step asks for 8 (SAM-R1) to 32 (SAM-Veteran) masks per image. The image encoder costs hundreds of mask
decodes, so each image is encoded once into an LRU cache keyed by its content hash, and the prompts of a batch,
across images, go through the prompt encoder and mask decoder together, grouped by prompt shape (number of point
tokens, with or without ``mask_input``) so no padding point ever changes a mask.

The engine is synchronous and Ray-free (inside a Ray worker it only asks Ray which GPU it was given);
``reward_server.actor`` runs it on one device thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from reward_server.cache import ByteLRU
from reward_server.config import EngineConfig
from reward_server.ground_truth import GroundTruth
from reward_server.images import ImageData, to_rgb
from reward_server.masks import edge_excluded_iou, encode_rle, mask_iou
from reward_server.protocol import ErrorCode, SegRequest, SegResult
from reward_server.requests import PreparedPrompt, prepare_prompt
from reward_server.sam2_build import build_sam2_model

logger = logging.getLogger(__name__)

LOGIT_CLAMP = 32.0  # SAM2ImagePredictor clamps returned low-res logits to this range
UPSAMPLE_PIXEL_BUDGET = 1 << 26  # float32 pixels per upsampling call (256 MB): large evaluation images stay bounded


@dataclass
class ImageFeatures:
    """One image's cached SAM2 features (batch dimension removed) and its original size."""

    image_embed: torch.Tensor
    high_res: tuple[torch.Tensor, ...]
    orig_hw: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.image_embed, *self.high_res))


@dataclass
class EngineStats:
    """Cumulative counters; the actor turns their increments into Ray metrics."""

    requests: int = 0
    encodes: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    decode_calls: int = 0
    decoded_prompts: int = 0
    errors: Counter = field(default_factory=Counter)


@dataclass
class Job:
    index: int
    request: SegRequest
    prompt: PreparedPrompt
    features: ImageFeatures
    gt: GroundTruth | None


def resolve_device(
    device: str, cuda_available: bool, gpu_ids: Sequence[str] | None, env: Mapping[str, str]
) -> torch.device:
    """The torch device of an engine; ``auto`` follows the GPUs Ray assigned to this process.

    Ray names the GPUs it assigns by their entries in the node's ``CUDA_VISIBLE_DEVICES`` (or their physical index
    where that is unset) and narrows the worker's ``CUDA_VISIBLE_DEVICES`` to them, so the assigned GPU is usually
    ``cuda:0``. With ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` Ray leaves the variable alone and every GPU of
    the node stays visible: the assigned one is then found by its position in the variable, or by its id.

    Args:
        device: ``auto``, or an explicit torch device (``cpu``, ``cuda``, ``cuda:N``) used as given.
        cuda_available: Whether torch can use CUDA in this process.
        gpu_ids: ``ray.get_runtime_context().get_accelerator_ids()["GPU"]`` inside a Ray worker, None outside Ray.
        env: The process environment (``CUDA_VISIBLE_DEVICES``).

    Returns:
        With ``auto``: the CPU without CUDA; any CUDA device outside Ray (torch's current one); inside Ray the first
        assigned GPU, or the CPU with a warning when Ray assigned none, since every visible GPU then belongs to
        someone else (verl's FSDP and vLLM workers, whose memory SAM2 would take).
    """
    if device != "auto":
        return torch.device(device)
    if not cuda_available:
        return torch.device("cpu")
    if gpu_ids is None:
        return torch.device("cuda")
    if not gpu_ids:
        logger.warning(
            "device auto in a Ray worker given no GPU: SAM2 runs on the CPU. Give the pool GPUs "
            "(reward_server.pool.gpus_per_actor > 0), or name the GPU to share (reward_server.engine.device=cuda:N)"
        )
        return torch.device("cpu")
    visible = [entry.strip() for entry in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    positions = [visible.index(gpu) for gpu in gpu_ids if gpu in visible]
    return torch.device("cuda", min(positions) if positions else min(int(gpu) for gpu in gpu_ids))


def ray_gpu_ids() -> list[str] | None:
    """The GPU ids Ray assigned to this process when it is a Ray worker; None for a driver or without Ray."""
    if sys.modules.get("ray") is None:  # nothing imported Ray (or it is blocked), so this process is no Ray worker
        return None
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        return None
    return context.get_accelerator_ids().get("GPU", [])


class SamEngine:
    """SAM2 with an image-embedding cache, a ground-truth cache and cross-image batched decoding.

    Args:
        config: Model, device, cache and batching settings.

    Raises:
        ValueError: When no checkpoint is given and random weights are not allowed.
    """

    def __init__(self, config: EngineConfig):
        if config.checkpoint is None and not config.allow_random_weights:
            raise ValueError(
                "no SAM2 checkpoint: set reward_server.engine.checkpoint=/path/to/sam2.1_hiera_large.pt (or a hub id "
                "such as facebook/sam2.1-hiera-large); random weights need allow_random_weights=true"
            )
        self.config = config
        self.device = resolve_device(config.device, torch.cuda.is_available(), ray_gpu_ids(), os.environ)
        overrides = {"model.image_size": config.image_size} if config.image_size else None
        torch.manual_seed(config.seed)
        self.model = build_sam2_model(
            config.model, config.checkpoint, self.device, config.apply_postprocessing, overrides
        )
        size = self.model.image_size
        self.feature_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        self.mask_input_size = 4 * self.model.sam_image_embedding_size
        # Not at module level: isort would put it above reward_server.sam2_build, which must import sam2 first.
        from sam2.utils.transforms import SAM2Transforms

        self.transforms = SAM2Transforms(resolution=size, mask_threshold=0.0)
        self._init_serving()
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if config.compile_encoder:
            self.model.image_encoder = torch.compile(
                self.model.image_encoder, dynamic=False, backend=config.compile_backend
            )

    def _init_serving(self) -> None:
        """The caches, counters and batching settings every segmenter of this interface serves with."""
        self.features: ByteLRU[str, ImageFeatures] = ByteLRU(self.config.cache_bytes, lambda f: f.nbytes)
        self.ground_truths: ByteLRU[str, GroundTruth] = ByteLRU(self.config.gt_cache_bytes, lambda g: g.nbytes)
        self.stats = EngineStats()
        self._encoder_sizes = sorted(self.config.encoder_batch_sizes)
        self._logits_dtype = getattr(torch, self.config.logits_dtype)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.config.dtype != "float32":
            return torch.autocast("cuda", dtype=getattr(torch, self.config.dtype))
        return contextlib.nullcontext()

    @property
    def input_size(self) -> int | None:
        """Side of the square the model sees each image at (None for a segmenter with no image model)."""
        return self.model.image_size

    def info(self) -> dict[str, Any]:
        """Device, model and cache occupancy, for health checks and the dashboard."""
        return {
            "model": self.config.model,
            "device": str(self.device),
            "dtype": self.config.dtype if self.device.type == "cuda" else "float32",
            "image_size": self.input_size,
            "cached_images": len(self.features),
            "cache_bytes": self.features.bytes,
            "cache_capacity": self.features.capacity,
            "cached_ground_truths": len(self.ground_truths),
        }

    @torch.inference_mode()
    def encode(self, images: list[np.ndarray]) -> list[ImageFeatures]:
        """Encodes RGB images in chunks of the largest encoder batch size, each image's levels cloned out of its
        chunk's (:meth:`feature_levels`)."""
        out: list[ImageFeatures] = []
        chunk = self._encoder_sizes[-1]
        for start in range(0, len(images), chunk):
            part = images[start : start + chunk]
            maps = self.feature_levels(part)
            for i, image in enumerate(part):
                out.append(
                    ImageFeatures(
                        image_embed=maps[-1][i].clone(),
                        high_res=tuple(level[i].clone() for level in maps[:-1]),
                        orig_hw=image.shape[:2],
                    )
                )
            self.stats.encodes += len(part)
        return out

    def feature_levels(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """SAM2's feature maps ``(B, C, H, W)`` of a chunk of images, finest level first and the image embedding
        last (the batch padded to a fixed size when the encoder is compiled; rows past ``images`` are unused)."""
        batch = torch.stack([self.transforms(image) for image in images]).to(self.device)
        if self.config.compile_encoder:
            fixed = next(size for size in self._encoder_sizes if size >= len(images))
            batch = torch.cat([batch, batch.new_zeros(fixed - len(images), *batch.shape[1:])])
        with self._autocast():
            backbone_out = self.model.forward_image(batch)
            _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        # (HW, B, C) sequences back to (B, C, H, W) maps, finest level first.
        return [
            feat.permute(1, 2, 0).reshape(batch.shape[0], -1, *hw)
            for feat, hw in zip(vision_feats, self.feature_sizes, strict=True)
        ]

    @torch.inference_mode()
    def decode(self, jobs: list[Job]) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits ``(B, 1, S, S)`` (unclamped, float32) and predicted IoUs ``(B,)`` for same-shape prompts."""
        # SAM2's own coordinate transform (pixels -> model input frame), so rounding matches its predictor.
        coords = torch.stack(
            [
                self.transforms.transform_coords(
                    torch.from_numpy(job.prompt.coords), normalize=True, orig_hw=job.features.orig_hw
                )
                for job in jobs
            ]
        )
        labels = torch.stack([torch.from_numpy(job.prompt.token_labels) for job in jobs])
        has_mask = jobs[0].prompt.mask_input is not None
        mask_input = torch.stack([torch.from_numpy(job.prompt.mask_input) for job in jobs]) if has_mask else None
        image_embed = torch.stack([job.features.image_embed for job in jobs])
        high_res = [torch.stack(level) for level in zip(*(job.features.high_res for job in jobs), strict=True)]
        with self._autocast():
            sparse, dense = self.model.sam_prompt_encoder(
                points=(coords.to(self.device, torch.float32), labels.to(self.device, torch.int32)),
                boxes=None,
                masks=None if mask_input is None else mask_input.to(self.device, torch.float32),
            )
            low_res, iou_pred, _, _ = self.model.sam_mask_decoder(
                image_embeddings=image_embed,
                image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=self.config.multimask_output,
                repeat_image=False,
                high_res_features=high_res,
            )
        low_res, iou_pred = low_res.float(), iou_pred.float()
        if self.config.multimask_output:
            best = iou_pred.argmax(dim=1)
            rows = torch.arange(len(jobs), device=best.device)
            low_res, iou_pred = low_res[rows, best][:, None], iou_pred[rows, best][:, None]
        self.stats.decode_calls += 1
        self.stats.decoded_prompts += len(jobs)
        return low_res, iou_pred[:, 0]

    def segment(
        self,
        requests: list[SegRequest],
        images: dict[str, ImageData] | None = None,
        ground_truths: dict[str, dict[str, Any]] | None = None,
    ) -> list[SegResult]:
        """Answers requests in order; bad input gives an error result, never an exception.

        Args:
            requests: Prompts on images identified by content key.
            images: Image payloads for keys the cache may not hold (sent once per actor by the client).
            ground_truths: COCO RLE ground truths by key, registered for scoring.
        """
        self.stats.requests += len(requests)
        results: list[SegResult | None] = [None] * len(requests)
        bad_gts = self._register_ground_truths(ground_truths or {})
        features = self._features_for(requests, images or {}, results)
        groups: dict[tuple[int, bool], list[Job]] = defaultdict(list)
        for index, request in enumerate(requests):
            if results[index] is not None:
                continue
            job = self._job(index, request, features[request.image_key], bad_gts)
            if isinstance(job, SegResult):
                results[index] = job
            else:
                groups[job.prompt.shape_key].append(job)
        for jobs in groups.values():
            for start in range(0, len(jobs), self.config.max_decode_batch):
                chunk = jobs[start : start + self.config.max_decode_batch]
                for job, result in zip(chunk, self._run_chunk(chunk), strict=True):
                    results[job.index] = result
        self.stats.errors.update(result.code for result in results if result.code is not None)
        return results

    def _features_for(
        self, requests: list[SegRequest], images: dict[str, ImageData], results: list[SegResult | None]
    ) -> dict[str, ImageFeatures]:
        """Each requested image's features, from the cache or encoded once now; failures go into ``results``.

        A lookup that finds the image cached, or already scheduled by an earlier request of the batch, is a hit.
        """
        found: dict[str, ImageFeatures] = {}
        to_encode: dict[str, np.ndarray] = {}
        failures: dict[str, SegResult] = {}
        for index, request in enumerate(requests):
            key = request.image_key
            if key in found or key in to_encode:
                self.stats.cache_hits += 1
            elif key in failures:
                results[index] = replace(failures[key])
                continue
            elif (cached := self.features.get(key)) is not None:
                self.stats.cache_hits += 1
                found[key] = cached
            elif key in images:
                try:
                    to_encode[key] = to_rgb(images[key])
                    self.stats.cache_misses += 1
                except (ValueError, TypeError) as err:
                    failures[key] = SegResult.failure(ErrorCode.BAD_IMAGE, str(err))
            else:
                failures[key] = SegResult.failure(ErrorCode.UNKNOWN_IMAGE, f"image {key} is not cached; resend it")
            if key in failures:
                results[index] = replace(failures[key])
        if to_encode:
            for key, encoded in zip(to_encode, self.encode(list(to_encode.values())), strict=True):
                found[key] = encoded
                self.features.put(key, encoded)
        return found

    def _register_ground_truths(self, ground_truths: dict[str, dict[str, Any]]) -> dict[str, str]:
        bad = {}
        for key, rle in ground_truths.items():
            if key in self.ground_truths:
                continue
            try:
                self.ground_truths.put(key, GroundTruth.from_rle(rle, self.config.ignore_edge))
            except (ValueError, TypeError) as err:
                bad[key] = str(err)
        return bad

    def _job(
        self, index: int, request: SegRequest, features: ImageFeatures, bad_gts: dict[str, str]
    ) -> Job | SegResult:
        gt = None
        if request.gt_key is not None:
            if request.gt_key in bad_gts:
                return SegResult.failure(ErrorCode.BAD_GT, bad_gts[request.gt_key])
            gt = self.ground_truths.get(request.gt_key)
            if gt is None:
                return SegResult.failure(ErrorCode.UNKNOWN_GT, f"ground truth {request.gt_key} is not registered")
            if gt.mask.shape != features.orig_hw:
                return SegResult.failure(
                    ErrorCode.BAD_GT, f"ground truth is {gt.mask.shape}, image is {features.orig_hw}"
                )
        prompt = prepare_prompt(request.prompt, features.orig_hw, self.mask_input_size)
        if isinstance(prompt, str):
            return SegResult.failure(ErrorCode.BAD_PROMPT, prompt)
        return Job(index, request, prompt, features, gt)

    def predict(self, jobs: list[Job]) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor]:
        """Masks at each image's size, low-res logits ``(B, 1, S, S)`` and predicted IoUs ``(B,)`` of same-shape jobs.

        The one step a segmenter other than SAM2 replaces (``reward_server.box_engine``); caching, validation and
        scoring stay the engine's.
        """
        low_res, scores = self.decode(jobs)
        return self._upsample(low_res, [job.features.orig_hw for job in jobs]), low_res, scores

    def _run_chunk(self, jobs: list[Job]) -> list[SegResult]:
        try:
            masks, low_res, scores = self.predict(jobs)
        except Exception as err:  # a failing decode answers its own requests; the engine keeps serving
            logger.exception("SAM2 decode failed for %d prompts", len(jobs))
            return [SegResult.failure(ErrorCode.INTERNAL, f"decode failed: {err!r:.300}") for _ in jobs]
        results = []
        for row, (job, mask) in enumerate(zip(jobs, masks, strict=True)):
            result = SegResult(mask=encode_rle(mask), score=float(scores[row]))
            if job.request.return_logits:
                clamped = low_res[row, 0].clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
                result.logits = clamped.to(self._logits_dtype).cpu().numpy()
            if job.gt is not None:
                result.iou = mask_iou(mask, job.gt.mask)
                if job.request.return_edge_iou:  # the ground truth's edge mask is computed on first use only
                    result.edge_iou = edge_excluded_iou(mask, job.gt.mask, ignore=job.gt.ignore)
            results.append(result)
        return results

    def _upsample(self, low_res: torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        """Binary masks at each prompt's image size, upsampled together per size within a pixel budget."""
        masks: list[np.ndarray | None] = [None] * len(sizes)
        rows_by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for row, size in enumerate(sizes):
            rows_by_size[size].append(row)
        for size, rows in rows_by_size.items():
            step = max(1, UPSAMPLE_PIXEL_BUDGET // (size[0] * size[1]))
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                upsampled = self.transforms.postprocess_masks(low_res[chunk], size)[:, 0] > 0
                for row, mask in zip(chunk, upsampled.cpu().numpy(), strict=True):
                    masks[row] = mask
        return masks
