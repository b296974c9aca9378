"""SAM2 parity inputs and SAM2's own single-image answers: what the engine tests, on CPU and on CUDA, compare with."""

import numpy as np
from sam2.sam2_image_predictor import SAM2ImagePredictor

from reward_server.protocol import Prompt


def random_image(seed: int, hw: tuple[int, int] = (840, 840)) -> np.ndarray:
    return (np.random.default_rng(seed).random((*hw, 3)) * 255).astype(np.uint8)


def parity_prompts(hw: tuple[int, int], seed: int) -> list[Prompt]:
    """Box; box + point; box + two points; box + point + ``mask_input``; a point alone."""
    rng = np.random.default_rng(seed)
    height, width = hw
    box = (0.1 * width, 0.15 * height, 0.7 * width, 0.8 * height)
    logits = (rng.normal(size=(256, 256)) * 4).astype(np.float32)
    return [
        Prompt(box=box),
        Prompt(box=box, points=((0.3 * width, 0.4 * height),), labels=(1,)),
        Prompt(box=box, points=((0.3 * width, 0.4 * height), (0.65 * width, 0.2 * height)), labels=(1, 0)),
        Prompt(box=box, points=((0.5 * width, 0.5 * height),), labels=(0,), mask_input=logits),
        Prompt(points=((0.2 * width, 0.3 * height),), labels=(1,)),
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


def assert_same_mask(mask: np.ndarray, reference_logits: np.ndarray, tolerance: float = 1e-3) -> None:
    """Equal to the reference's ``logits > 0`` except where its logit is within ``tolerance`` of the threshold."""
    differ = mask != (reference_logits > 0)
    assert not differ.any() or np.abs(reference_logits[differ]).max() < tolerance
