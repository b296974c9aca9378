"""SAM2 parity inputs and SAM2's own single-image answers: what the engine is compared with, by the tests (on CPU and on
CUDA) and by ``make gpu-check``'s bare part (:mod:`bench.gpu_bare`)."""

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from sam2.sam2_image_predictor import SAM2ImagePredictor

from reward_server.cache import ByteLRU
from reward_server.protocol import Prompt, SegRequest, SegResult, content_key


def random_image(seed: int, hw: tuple[int, int] = (840, 840)) -> np.ndarray:
    return (np.random.default_rng(seed).random((*hw, 3)) * 255).astype(np.uint8)


def parity_prompts(hw: tuple[int, int], seed: int, mask_side: int = 256) -> list[Prompt]:
    """Box; box + point; box + two points; box + point + ``mask_input`` (``mask_side`` square: the model's low-res
    logits, 256 at 1024 px); a point alone."""
    rng = np.random.default_rng(seed)
    height, width = hw
    box = (0.1 * width, 0.15 * height, 0.7 * width, 0.8 * height)
    logits = (rng.normal(size=(mask_side, mask_side)) * 4).astype(np.float32)
    return [
        Prompt(box=box),
        Prompt(box=box, points=((0.3 * width, 0.4 * height),), labels=(1,)),
        Prompt(box=box, points=((0.3 * width, 0.4 * height), (0.65 * width, 0.2 * height)), labels=(1, 0)),
        Prompt(box=box, points=((0.5 * width, 0.5 * height),), labels=(0,), mask_input=logits),
        Prompt(points=((0.2 * width, 0.3 * height),), labels=(1,)),
    ]


def parity_cases(mask_side: int = 256) -> list[tuple[np.ndarray, Prompt]]:
    """Every parity prompt on two images of different sizes (840x840, 480x640), each with its image."""
    images = [random_image(0), random_image(1, (480, 640))]
    return [
        (image, prompt) for i, image in enumerate(images) for prompt in parity_prompts(image.shape[:2], i, mask_side)
    ]


def predictor_reference(predictor: SAM2ImagePredictor, prompt: Prompt, multimask: bool = False):
    """SAM2's own single-image path: (full-resolution logits, score, low-res logits)."""
    masks, scores, logits = predictor.predict(
        point_coords=np.array(prompt.points, np.float32) if prompt.points else None,
        point_labels=np.array(prompt.labels) if prompt.labels else None,
        box=None if prompt.box is None else np.array(prompt.box, np.float32),
        mask_input=None if prompt.mask_input is None else prompt.mask_input[None],
        multimask_output=multimask,
        return_logits=True,
    )
    best = int(np.argmax(scores))
    return masks[best], float(scores[best]), logits[best]


def mask_disagreement(mask: np.ndarray, reference_logits: np.ndarray, tolerance: float = 1e-3) -> int:
    """Pixels where ``mask`` differs from the reference's ``logits > 0`` although its logit is at least ``tolerance``
    away from the threshold (closer than that, float rounding decides the side)."""
    differ = mask != (reference_logits > 0)
    return int((np.abs(reference_logits[differ]) >= tolerance).sum())


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls and convolutions on or off, restored afterwards (the engine switches them on when built)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def segment_afresh(engine, cases: list[tuple[np.ndarray, Prompt]], encode: bool = True) -> list[SegResult]:
    """The engine's answers to ``cases``; with ``encode``, its cache emptied first so that every image is encoded in
    this call (without, the images must be cached).

    Raises:
        RuntimeError: When a prompt gets an error result.
    """
    if encode:
        engine.features = ByteLRU(engine.features.capacity, lambda features: features.nbytes)
    requests = [SegRequest(content_key(image), prompt, return_logits=True) for image, prompt in cases]
    images = {content_key(image): image for image, _ in cases} if encode else None
    results = engine.segment(requests, images=images)
    failed = [result.error for result in results if not result.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} parity prompts failed: {failed[0]}")
    return results
