"""The SAM2 engine against SAM2ImagePredictor, and its cache, ground-truth scoring and bad-input answers."""

from collections import Counter

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from sam2.sam2_image_predictor import SAM2ImagePredictor

from bench.sam2_parity import parity_cases, parity_prompts, predictor_reference, random_image
from reward_server import engine as engine_module
from reward_server import ground_truth as ground_truth_module
from reward_server.config import EngineConfig
from reward_server.engine import SamEngine, ray_gpu_ids, resolve_device
from reward_server.masks import edge_excluded_iou, encode_rle, mask_iou
from reward_server.protocol import ErrorCode, Prompt, SegRequest, content_key

from support.sam_parity import assert_same_mask

pytestmark = pytest.mark.slow


def tiny_config(**overrides) -> EngineConfig:
    return EngineConfig(model="sam2.1_hiera_t", allow_random_weights=True, device="cpu", **overrides)


@pytest.fixture(scope="module")
def engine_1024() -> SamEngine:
    return SamEngine(tiny_config(logits_dtype="float32"))


@pytest.fixture(scope="module")
def engine_512() -> SamEngine:
    return SamEngine(tiny_config(image_size=512, cache_bytes=1 << 40))


def test_batched_cached_path_matches_sam2_predictor(engine_1024):
    """Box; box + points; box + points + mask_input; across two images of different sizes in one call."""
    cases = parity_cases()
    images = list({id(image): image for image, _ in cases}.values())
    requests = [SegRequest(content_key(image), prompt, return_logits=True) for image, prompt in cases]
    results = engine_1024.segment(requests, images={content_key(image): image for image in images})
    predictor = SAM2ImagePredictor(engine_1024.model)
    for image in images:
        predictor.set_image(image)
        for (case_image, prompt), result in zip(cases, results, strict=True):
            if case_image is not image:
                continue
            full_logits, score, logits = predictor_reference(predictor, prompt)
            assert result.ok, result.error
            assert np.abs(result.logits - np.clip(logits, -32, 32)).max() < 1e-4
            assert result.score == pytest.approx(score, abs=1e-5)
            assert_same_mask(result.mask_array(), full_logits)


@pytest.mark.parametrize("model", ["sam2.1_hiera_t", "sam2_hiera_t"])  # SAM 2.1, and SAM 2.0 as Seg-Zero evaluates
def test_multimask_keeps_the_highest_scoring_mask(model):
    """SAM2ImagePredictor.predict(multimask_output=True) then argmax(scores), over a batch of prompt shapes."""
    engine = SamEngine(
        EngineConfig(
            model=model, allow_random_weights=True, device="cpu", multimask_output=True, logits_dtype="float32"
        )
    )
    image = random_image(2, (480, 640))
    prompts = parity_prompts(image.shape[:2], 2)
    requests = [SegRequest(content_key(image), prompt, return_logits=True) for prompt in prompts]
    results = engine.segment(requests, {content_key(image): image})
    predictor = SAM2ImagePredictor(engine.model)
    predictor.set_image(image)
    for prompt, result in zip(prompts, results, strict=True):
        full_logits, score, logits = predictor_reference(predictor, prompt, multimask=True)
        assert result.ok, result.error
        assert result.score == pytest.approx(score, abs=1e-5)
        assert np.abs(result.logits - np.clip(logits, -32, 32)).max() < 1e-4
        assert_same_mask(result.mask_array(), full_logits)


def test_samr1_shaped_step_encodes_each_image_once(engine_512):
    engine_512.features = type(engine_512.features)(engine_512.features.capacity, lambda f: f.nbytes)
    encodes_before = engine_512.stats.encodes
    images = [random_image(10 + i) for i in range(3)]
    payloads = {content_key(image): image for image in images}
    requests = [SegRequest(key, Prompt(box=(50 + 10 * r, 60, 500, 600 - 20 * r))) for key in payloads for r in range(8)]
    results = engine_512.segment(requests, images=payloads)
    assert all(result.ok for result in results)
    assert engine_512.stats.encodes - encodes_before == 3
    # The next step's rollouts on the same images hit the cache without resending them.
    assert all(result.ok for result in engine_512.segment(requests))
    assert engine_512.stats.encodes - encodes_before == 3


def test_lru_eviction_asks_for_the_image_again():
    engine = SamEngine(tiny_config(image_size=512))
    one_image_bytes = engine.encode([random_image(0)])[0].nbytes
    engine.features = type(engine.features)(int(1.5 * one_image_bytes), lambda f: f.nbytes)
    first, second = random_image(20), random_image(21)
    keys = [content_key(first), content_key(second)]
    for key, image in zip(keys, (first, second), strict=True):
        assert engine.segment([SegRequest(key, Prompt(box=(10, 10, 400, 400)))], {key: image})[0].ok
    (evicted,) = engine.segment([SegRequest(keys[0], Prompt(box=(10, 10, 400, 400)))])
    assert evicted.code == ErrorCode.UNKNOWN_IMAGE and "resend" in evicted.error
    assert engine.features.evictions == 1 and engine.features.bytes <= engine.features.capacity


def test_ground_truth_scores_and_ignore_mask_computed_once(engine_512, monkeypatch):
    calls = []
    original = ground_truth_module.edge_ignore_mask
    monkeypatch.setattr(ground_truth_module, "edge_ignore_mask", lambda *a, **k: calls.append(1) or original(*a, **k))
    image = random_image(30)
    gt = np.zeros((840, 840), bool)
    gt[200:600, 150:500] = True
    rle = encode_rle(gt)
    key, gt_key = content_key(image), content_key(rle)
    requests = [
        SegRequest(key, Prompt(box=(150 + 5 * r, 200, 500, 600)), gt_key=gt_key, return_edge_iou=True) for r in range(8)
    ]
    results = engine_512.segment(requests, images={key: image}, ground_truths={gt_key: rle})
    for result in results:
        mask = result.mask_array()
        assert result.iou == pytest.approx(mask_iou(mask, gt), abs=0)
        assert result.edge_iou == pytest.approx(edge_excluded_iou(mask, gt), abs=0)
    assert len(calls) == 1


def test_edge_iou_and_its_edge_mask_only_when_asked(engine_512, monkeypatch):
    """SAM-R1 never asks: no Canny edges, no second IoU, ``edge_iou`` None and the same ``iou`` as when asked."""
    calls = Counter()

    def counted(name, original):
        def call(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        return call

    for module, name in ((ground_truth_module, "edge_ignore_mask"), (engine_module, "edge_excluded_iou")):
        monkeypatch.setattr(module, name, counted(name, getattr(module, name)))
    image = random_image(31)
    gt = np.zeros((840, 840), bool)
    gt[150:650, 250:600] = True
    rle = encode_rle(gt)
    key, gt_key = content_key(image), content_key(rle)
    prompts = [Prompt(box=(240 + 5 * r, 140, 610, 660 - 10 * r)) for r in range(8)]

    plain = engine_512.segment(
        [SegRequest(key, p, gt_key=gt_key) for p in prompts], images={key: image}, ground_truths={gt_key: rle}
    )
    assert all(result.ok and result.edge_iou is None for result in plain) and calls == Counter()

    # One batch mixing both kinds: each request gets what it asked for.
    asked = [r % 2 == 0 for r in range(len(prompts))]
    mixed = engine_512.segment(
        [SegRequest(key, p, gt_key=gt_key, return_edge_iou=a) for p, a in zip(prompts, asked, strict=True)]
    )
    assert calls == Counter(edge_ignore_mask=1, edge_excluded_iou=sum(asked))
    for before, after, ask in zip(plain, mixed, asked, strict=True):
        assert after.mask == before.mask and after.iou == before.iou
        if not ask:
            assert after.edge_iou is None
            continue
        mask = mask_utils.decode({"size": after.mask["size"], "counts": after.mask["counts"].encode()}).astype(bool)
        assert after.edge_iou == edge_excluded_iou(mask, gt)


def test_bad_input_is_answered_per_request(engine_512):
    image = random_image(40)
    key = content_key(image)
    gt_rle = encode_rle(np.ones((840, 840), bool))
    wrong_size_rle = encode_rle(np.ones((10, 10), bool))
    gts = {"gt": gt_rle, "small": wrong_size_rle, "corrupt": {"size": [840, 840], "counts": "!!"}}
    good = Prompt(box=(10, 10, 300, 300))
    cases = [
        (SegRequest(key, Prompt(box=(float("nan"), 10, 300, 300))), ErrorCode.BAD_PROMPT, "non-finite"),
        (SegRequest(key, Prompt(box=(10, 10, float("inf"), 300))), ErrorCode.BAD_PROMPT, "non-finite"),
        (SegRequest(key, Prompt(box=(300, 10, 10, 300))), ErrorCode.BAD_PROMPT, "empty box"),
        (SegRequest(key, Prompt(box=(10, 10, 10, 300))), ErrorCode.BAD_PROMPT, "empty box"),
        (SegRequest(key, Prompt(box=(900, 900, 1000, 1000))), ErrorCode.BAD_PROMPT, "empty box"),
        (SegRequest(key, Prompt(box=(1, 2, 3))), ErrorCode.BAD_PROMPT, "expected 4 numbers"),
        (SegRequest(key, Prompt(points=((900, 10),), labels=(1,))), ErrorCode.BAD_PROMPT, "outside"),
        (SegRequest(key, Prompt(points=((10, 10),), labels=(2,))), ErrorCode.BAD_PROMPT, "labels must be"),
        (SegRequest(key, Prompt(points=((10, 10),), labels=())), ErrorCode.BAD_PROMPT, "1 points but 0 labels"),
        (SegRequest(key, Prompt()), ErrorCode.BAD_PROMPT, "needs a box"),
        (
            SegRequest(key, Prompt(box=good.box, mask_input=np.zeros((64, 64), np.float32))),
            ErrorCode.BAD_PROMPT,
            "mask_input",
        ),
        (
            SegRequest(key, Prompt(box=good.box, mask_input=np.full((128, 128), np.nan, np.float32))),
            ErrorCode.BAD_PROMPT,
            "non-finite",
        ),
        (SegRequest("corrupt-image", good), ErrorCode.BAD_IMAGE, "undecodable"),
        (SegRequest("never-sent", good), ErrorCode.UNKNOWN_IMAGE, "resend"),
        (SegRequest(key, good, gt_key="unregistered"), ErrorCode.UNKNOWN_GT, "not registered"),
        (SegRequest(key, good, gt_key="small"), ErrorCode.BAD_GT, "ground truth is"),
        (SegRequest(key, good, gt_key="corrupt"), ErrorCode.BAD_GT, "malformed RLE"),
    ]
    requests = [case[0] for case in cases] + [SegRequest(key, good, gt_key="gt")]
    errors_before = sum(engine_512.stats.errors.values())
    results = engine_512.segment(requests, images={key: image, "corrupt-image": b"\x89PNG broken"}, ground_truths=gts)
    for (request, code, reason), result in zip(cases, results, strict=False):
        assert result.code == code, (request, result)
        assert reason in result.error
    assert results[-1].ok and results[-1].iou is not None  # the good request in the same batch is served
    assert sum(engine_512.stats.errors.values()) - errors_before == len(cases)


def test_points_are_not_padded_across_groups(engine_512):
    """A 1-point and a 2-point prompt in one call give the same masks as when sent alone."""
    image = random_image(50)
    key = content_key(image)
    one = Prompt(box=(100, 100, 600, 600), points=((300, 300),), labels=(1,))
    two = Prompt(box=(100, 100, 600, 600), points=((300, 300), (500, 150)), labels=(1, 0))
    together = engine_512.segment(
        [SegRequest(key, one, return_logits=True), SegRequest(key, two, return_logits=True)], {key: image}
    )
    alone = [engine_512.segment([SegRequest(key, p, return_logits=True)])[0] for p in (one, two)]
    for joint, single in zip(together, alone, strict=True):
        assert np.abs(joint.logits.astype(np.float32) - single.logits.astype(np.float32)).max() < 1e-3


def test_compiled_encoder_pads_to_fixed_batch_sizes():
    plain = SamEngine(tiny_config(image_size=256))
    compiled = SamEngine(
        tiny_config(image_size=256, compile_encoder=True, compile_backend="eager", encoder_batch_sizes=[2, 4])
    )
    seen_batches = []
    forward = compiled.model.forward_image
    compiled.model.forward_image = lambda batch: seen_batches.append(batch.shape[0]) or forward(batch)
    images = [random_image(60 + i) for i in range(3)]
    for ours, reference in zip(compiled.encode(images), plain.encode(images), strict=True):
        assert torch.allclose(ours.image_embed, reference.image_embed, atol=1e-5)
    assert seen_batches == [4]


def test_checkpoint_is_required_unless_random_weights_are_allowed():
    with pytest.raises(ValueError, match="no SAM2 checkpoint"):
        SamEngine(EngineConfig(model="sam2.1_hiera_t", device="cpu"))


NOSET = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


@pytest.mark.parametrize(
    ("device", "cuda", "gpu_ids", "env", "expected"),
    [
        ("cpu", True, ["0"], {}, "cpu"),  # an explicit device is used as given
        ("cuda:3", True, [], {}, "cuda:3"),
        ("auto", False, ["0"], {}, "cpu"),
        ("auto", True, None, {}, "cuda"),  # outside Ray: torch's current device
        ("auto", True, ["3"], {"CUDA_VISIBLE_DEVICES": "3"}, "cuda:0"),  # Ray narrowed the visible devices
        ("auto", True, ["6", "4"], {"CUDA_VISIBLE_DEVICES": "4,6"}, "cuda:0"),
        ("auto", True, ["3"], {NOSET: "1", "CUDA_VISIBLE_DEVICES": "2,3"}, "cuda:1"),  # position among the visible
        ("auto", True, ["5"], {NOSET: "1"}, "cuda:5"),  # every GPU visible: the id is the index
    ],
)
def test_auto_device_follows_rays_assignment(device, cuda, gpu_ids, env, expected):
    assert resolve_device(device, cuda, gpu_ids, env) == torch.device(expected)


def test_a_ray_worker_given_no_gpu_keeps_off_the_visible_ones(caplog):
    """SAM2 beside verl without a GPU of its own must not take cuda:0, which is an FSDP/vLLM worker's."""
    with caplog.at_level("WARNING", logger="reward_server.engine"):
        assert resolve_device("auto", True, [], {"CUDA_VISIBLE_DEVICES": "0,1"}) == torch.device("cpu")
    assert "gpus_per_actor" in caplog.text and "engine.device=cuda:N" in caplog.text


def test_outside_ray_there_are_no_assigned_gpus():
    assert ray_gpu_ids() is None
