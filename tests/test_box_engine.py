"""The box-only segmenter (``reward_server=box``): its masks are pycocotools' filled boxes, its IoUs pycocotools'
IoUs, and it answers bad input as the SAM2 engine does."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from reward_server.box_engine import MASK_INPUT_SIZE, BoxEngine
from reward_server.config import BOX_MODEL, EngineConfig, load_preset
from reward_server.engine import SamEngine
from reward_server.masks import box_to_mask, encode_rle, mask_to_box
from reward_server.protocol import ErrorCode, Prompt, SegRequest, content_key
from reward_server.segmenters import build_engine


def _box_rle(box, hw):
    """pycocotools' rasterisation of an integer xyxy box (its xywh polygon)."""
    x1, y1, x2, y2 = box
    (rle,) = mask_utils.frPyObjects(np.array([[x1, y1, x2 - x1, y2 - y1]], dtype=np.float64), *hw)
    return rle


def test_box_masks_are_pycocotools_boxes_and_invert_mask_to_box():
    rng = np.random.default_rng(0)
    hw = (60, 80)
    for _ in range(50):
        x1, x2 = sorted(rng.choice(81, 2, replace=False))
        y1, y2 = sorted(rng.choice(61, 2, replace=False))
        mask = box_to_mask([x1, y1, x2, y2], hw)
        assert np.array_equal(mask, mask_utils.decode(_box_rle((x1, y1, x2, y2), hw)).astype(bool))
        assert mask_to_box(mask) == [x1, y1, x2, y2]
    assert not box_to_mask([90, 10, 120, 20], hw).any()


def test_the_engine_scores_the_filled_box_against_the_ground_truth():
    engine = build_engine(EngineConfig(model=BOX_MODEL))
    assert isinstance(engine, BoxEngine) and engine.info()["model"] == BOX_MODEL
    image = np.random.default_rng(1).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    truth = np.zeros((90, 120), dtype=bool)
    truth[20:70, 30:100] = True
    truth[40:50, 50:60] = False
    boxes = [(30, 20, 100, 70), (0, 0, 60, 45), (10.4, 5.6, 119.2, 89.9)]
    requests = [
        SegRequest(content_key(image), Prompt(box=box), gt_key="gt", return_logits=True, return_edge_iou=True)
        for box in boxes
    ]
    results = engine.segment(requests, images={content_key(image): image}, ground_truths={"gt": encode_rle(truth)})
    for box, result in zip(boxes, results, strict=True):
        assert result.ok, result.error
        expected = box_to_mask(box, truth.shape)
        assert np.array_equal(result.mask_array(), expected)
        reference = mask_utils.iou([encode_rle(expected)], [encode_rle(truth)], [0])[0][0]
        assert result.iou == pytest.approx(reference, abs=1e-9)
        assert result.logits.shape == (MASK_INPUT_SIZE, MASK_INPUT_SIZE) and 0.0 <= result.edge_iou <= 1.0
    # The first box is the truth's own box: the ground truth's hole is all the box gets wrong.
    assert results[0].iou == pytest.approx(1 - 100 / (50 * 70))
    # Without a box, the mask given is kept (its logits, as a refinement step sends them); clicks change nothing.
    again = Prompt(points=((5.0, 5.0),), labels=(1,), mask_input=results[0].logits.astype(np.float32))
    (kept,) = engine.segment([SegRequest(content_key(image), again, gt_key="gt")])
    assert kept.iou == pytest.approx(results[0].iou, abs=0.01)


def test_bad_input_gets_the_engines_error_codes():
    engine = build_engine(EngineConfig(model=BOX_MODEL))
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    key = content_key(image)
    bad = [
        Prompt(box=(30, 30, 10, 10)),
        Prompt(box=(float("nan"), 0, 5, 5)),
        Prompt(points=((50.0, 1.0),), labels=(1,)),
    ]
    results = engine.segment([SegRequest(key, prompt) for prompt in bad], images={key: image})
    assert [result.code for result in results] == [ErrorCode.BAD_PROMPT] * 3
    (unknown,) = engine.segment([SegRequest("missing", Prompt(box=(0, 0, 5, 5)))])
    assert unknown.code == ErrorCode.UNKNOWN_IMAGE
    assert dict(engine.stats.errors) == {ErrorCode.BAD_PROMPT: 3, ErrorCode.UNKNOWN_IMAGE: 1}


def test_the_box_preset_selects_it_and_sam2_stays_the_default():
    assert load_preset("box").engine.model == BOX_MODEL
    assert load_preset("large").engine.model != BOX_MODEL
    assert (
        type(build_engine(EngineConfig(model="sam2.1_hiera_t", allow_random_weights=True, device="cpu"))) is SamEngine
    )
