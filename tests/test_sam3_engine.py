"""SAM 3 as the segmenter: the engine against transformers' own ``Sam3TrackerProcessor`` + ``Sam3TrackerModel`` path,
on a tiny random tracker, for every prompt shape the rewards send, across images of two sizes in one call."""

import numpy as np
import pytest
import torch

from bench.sam2_parity import parity_cases
from reward_server.config import EngineConfig, load_preset
from reward_server.protocol import Prompt, SegRequest, content_key
from reward_server.sam3_engine import Sam3Engine
from reward_server.segmenters import build_engine

from support.sam_parity import assert_same_mask

MASK_SIDE = 64
"""The tiny tracker's low-res logits: 4 x its 16 x 16 patch grid at 224 px (facebook/sam3: 288 at 1008 px)."""


def tiny(**overrides) -> Sam3Engine:
    config = EngineConfig(model="sam3_tiny", allow_random_weights=True, device="cpu", logits_dtype="float32")
    return build_engine(EngineConfig(**{**config.__dict__, **overrides}))


@pytest.fixture(scope="module")
def engine() -> Sam3Engine:
    return tiny()


def transformers_reference(engine: Sam3Engine, image: np.ndarray, prompt: Prompt, multimask: bool = False):
    """transformers' documented path on one image: processor(images, prompts) -> model -> post_process_masks.
    Returns (full-resolution logits, score, low-res logits)."""
    prompts = {}
    if prompt.box is not None:
        prompts["input_boxes"] = [[list(prompt.box)]]
    if prompt.points:
        prompts["input_points"] = [[[list(point) for point in prompt.points]]]
        prompts["input_labels"] = [[list(prompt.labels)]]
    inputs = engine.processor(images=image, return_tensors="pt", **prompts)
    masks = None if prompt.mask_input is None else torch.from_numpy(prompt.mask_input)[None, None]
    with torch.inference_mode():
        out = engine.model(**inputs, input_masks=masks, multimask_output=multimask)
    best = int(out.iou_scores[0, 0].argmax())
    low_res = out.pred_masks[:, :, best : best + 1]
    full = engine.processor.post_process_masks(low_res, inputs["original_sizes"], binarize=False)[0]
    return full[0, 0].numpy(), float(out.iou_scores[0, 0, best]), low_res[0, 0, 0].numpy()


@pytest.mark.parametrize("multimask", [False, True])
def test_batched_cached_path_matches_transformers_sam3_tracker(multimask):
    """Box; box + points; box + points + mask input; a point alone; two images of different sizes in one call."""
    engine = tiny(multimask_output=multimask)
    cases = parity_cases(mask_side=MASK_SIDE)
    images = list({id(image): image for image, _ in cases}.values())
    requests = [SegRequest(content_key(image), prompt, return_logits=True) for image, prompt in cases]
    results = engine.segment(requests, images={content_key(image): image for image in images})
    assert engine.stats.encodes == len(images) and engine.stats.decoded_prompts == len(cases)
    for (image, prompt), result in zip(cases, results, strict=True):
        assert result.ok, result.error
        full, score, low_res = transformers_reference(engine, image, prompt, multimask)
        assert np.abs(result.logits - np.clip(low_res, -32, 32)).max() < 1e-4
        assert result.score == pytest.approx(score, abs=1e-5)
        assert_same_mask(result.mask_array(), full)


def test_a_refinement_takes_the_engines_own_logits_and_a_cached_image(engine):
    image = parity_cases(MASK_SIDE)[0][0]
    key, box = content_key(image), (84.0, 126.0, 588.0, 672.0)
    (first,) = engine.segment([SegRequest(key, Prompt(box=box), return_logits=True)], images={key: image})
    encodes = engine.stats.encodes
    refine = Prompt(box=box, points=((420.0, 420.0),), labels=(0,), mask_input=first.logits)
    (second,) = engine.segment([SegRequest(key, refine, return_logits=True)])  # no image sent: the cache has it
    assert second.ok and engine.stats.encodes == encodes
    full, score, _ = transformers_reference(engine, image, refine)
    assert second.score == pytest.approx(score, abs=1e-5)
    assert_same_mask(second.mask_array(), full)
    # A mask input of another segmenter's size (SAM2's 256) is refused with a reason, not resized behind its back.
    (wrong,) = engine.segment([SegRequest(key, Prompt(box=box, mask_input=np.zeros((256, 256), np.float32)))])
    assert not wrong.ok and "64" in wrong.error


def test_ground_truth_scoring_and_the_presets(engine):
    from reward_server.masks import edge_excluded_iou, encode_rle, mask_iou

    image = parity_cases(MASK_SIDE)[0][0]
    key, gt = content_key(image), np.zeros(image.shape[:2], bool)
    gt[100:500, 200:600] = True
    gt_key = "gt"
    request = SegRequest(key, Prompt(box=(200.0, 100.0, 600.0, 500.0)), gt_key=gt_key, return_edge_iou=True)
    (result,) = engine.segment([request], images={key: image}, ground_truths={gt_key: encode_rle(gt)})
    assert result.iou == pytest.approx(mask_iou(result.mask_array(), gt))
    assert result.edge_iou == pytest.approx(edge_excluded_iou(result.mask_array(), gt))
    assert load_preset("sam3").engine.model == "sam3" and load_preset("sam3").engine.checkpoint == "facebook/sam3"
    with pytest.raises(ValueError, match="no SAM 3 checkpoint"):
        Sam3Engine(EngineConfig(model="sam3", device="cpu"))
