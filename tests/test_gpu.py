"""GPU checks: the vLLM evaluation policy on the tiny Qwen2.5-VL, and the SAM2 engine on CUDA (default device and
dtype, parity with SAM2ImagePredictor, bf16 against fp32, TF32, torch.compile, the GPU Ray assigns).

Tiny random models built at test time, as in the CPU tests; conftest skips these tests where CUDA is unavailable.
``python -m bench.gpu_check`` runs them together with the SAM2-Large throughput figures.
"""

import asyncio
import os

import numpy as np
import pytest
import torch
from PIL import Image
from sam2.sam2_image_predictor import SAM2ImagePredictor

from bench.sam2_parity import parity_cases, predictor_reference, random_image, segment_afresh, tf32
from bench.sam2_throughput import compile_unavailable
from recipe.evaluate.config import EvalConfig
from recipe.evaluate.modes import MODES
from recipe.evaluate.policies import VLLMPolicy, build_policy, vllm_prompts
from recipe.task.prompts import build_prompt
from reward_server.config import EngineConfig
from reward_server.engine import SamEngine
from reward_server.masks import mask_iou
from reward_server.protocol import Prompt, SegResult

from support.sam_parity import assert_same_mask

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

TINY_SAM2 = "sam2.1_hiera_t"
MAX_NEW_TOKENS = 16
RAY_TIMEOUT_S = 120  # a worker start and a tiny SAM2 build take seconds; fail rather than wait on a stuck task


def conversation(question: str, seed: int) -> list[dict]:
    """A SAM-R1 evaluation turn: an 840x840 random image and the question."""
    pixels = np.random.default_rng(seed).integers(0, 255, (840, 840, 3), dtype=np.uint8)
    content = [
        {"type": "image", "image": Image.fromarray(pixels)},
        {"type": "text", "text": build_prompt("samr1", question)},
    ]
    return [{"role": "user", "content": content}]


# First in the file: vLLM starts its engine process by fork only while this process has not initialised CUDA, which
# the SAM2 tests below do.
def test_vllm_policy_generates_on_the_tiny_qwen(tiny_qwen_path: str) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed in this environment")
    cfg = EvalConfig(mode="samr1")
    cfg.model.path, cfg.model.backend = tiny_qwen_path, "vllm"
    cfg.model.enforce_eager = True  # CUDA graphs would only add start-up time to a 16-token answer
    cfg.model.gpu_memory_utilization = 0.2
    cfg.generation.max_new_tokens = MAX_NEW_TOKENS
    policy = build_policy(cfg, MODES["samr1"])
    assert isinstance(policy, VLLMPolicy)
    batch = [conversation("the red cup on the left of the table", 0), conversation("dog", 1)]

    answers = asyncio.run(policy.generate(batch))
    assert len(answers) == len(batch) and all(isinstance(answer, str) for answer in answers)
    assert policy.seconds > 0

    # The same requests once more, to see the tokens behind the texts the policy returns.
    outputs = policy.llm.generate(vllm_prompts(policy.processor, batch), policy.params, use_tqdm=False)
    tokenizer = policy.processor.tokenizer
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for output in outputs:
        # The 840x840 image reaches the model unresized: (840 / 28)^2 = 900 visual tokens, as in training.
        assert output.prompt_token_ids.count(image_pad) == 900
        (completion,) = output.outputs
        token_ids = list(completion.token_ids)
        assert 1 <= len(token_ids) <= MAX_NEW_TOKENS
        assert all(0 <= token < len(tokenizer) for token in token_ids)
        assert completion.finish_reason == "stop" or (
            completion.finish_reason == "length" and len(token_ids) == MAX_NEW_TOKENS
        )
        assert isinstance(completion.text, str)


@pytest.fixture(scope="module")
def cases() -> list[tuple[np.ndarray, Prompt]]:
    """Every parity prompt on two images of different sizes, sent to the engine in one call."""
    return parity_cases()


@pytest.fixture(scope="module")
def engine_fp32() -> SamEngine:
    return SamEngine(
        EngineConfig(model=TINY_SAM2, allow_random_weights=True, device="cuda", dtype="float32", logits_dtype="float32")
    )


@pytest.fixture(scope="module")
def engine_bf16() -> SamEngine:
    """The production settings (device ``auto``, bfloat16) on the tiny model; same seed, so same weights."""
    return SamEngine(EngineConfig(model=TINY_SAM2, allow_random_weights=True, logits_dtype="float32"))


def mask_ious(first: list[SegResult], second: list[SegResult]) -> list[float]:
    return [mask_iou(a.mask_array(), b.mask_array()) for a, b in zip(first, second, strict=True)]


def test_default_engine_runs_on_cuda_in_bf16(engine_bf16: SamEngine) -> None:
    assert engine_bf16.device.type == "cuda"
    assert {parameter.device.type for parameter in engine_bf16.model.parameters()} == {"cuda"}
    assert engine_bf16.info()["dtype"] == "bfloat16"
    (features,) = engine_bf16.encode([random_image(0)])
    assert all(tensor.is_cuda for tensor in (features.image_embed, *features.high_res))


def test_fp32_engine_matches_sam2_predictor_on_cuda(engine_fp32: SamEngine, cases) -> None:
    """As the CPU parity test: batched, cached, across images of two sizes; TF32 off so both are exact fp32."""
    with tf32(False):
        results = segment_afresh(engine_fp32, cases)
        predictor = SAM2ImagePredictor(engine_fp32.model)
        for image in {id(image): image for image, _ in cases}.values():
            predictor.set_image(image)
            for (case_image, prompt), result in zip(cases, results, strict=True):
                if case_image is not image:
                    continue
                full_logits, score, low_res = predictor_reference(predictor, prompt)
                assert np.abs(result.logits - np.clip(low_res, -32, 32)).max() < 1e-3
                assert result.score == pytest.approx(score, abs=1e-4)
                # Equal masks, except where SAM2's own logit is too close to the threshold to tell.
                assert_same_mask(result.mask_array(), full_logits)


def test_bf16_masks_match_fp32(engine_bf16: SamEngine, engine_fp32: SamEngine, cases) -> None:
    with tf32(False):
        reference = segment_afresh(engine_fp32, cases)
    with tf32(True):  # as the engine runs in production
        ious = mask_ious(segment_afresh(engine_bf16, cases), reference)
    assert min(ious) > 0.95, ious


def test_tf32_keeps_fp32_masks_within_tolerance(engine_fp32: SamEngine, cases) -> None:
    with tf32(False):
        exact = segment_afresh(engine_fp32, cases)
    with tf32(True):
        fast = segment_afresh(engine_fp32, cases)
    largest_diff = max(float(np.abs(a.logits - b.logits).max()) for a, b in zip(exact, fast, strict=True))
    scale = max(float(np.abs(result.logits).max()) for result in exact)
    assert largest_diff > 0, "TF32 changed nothing: the allow_tf32 switches the engine sets have no effect here"
    assert largest_diff < 0.02 * scale, (largest_diff, scale)
    ious = mask_ious(fast, exact)
    assert min(ious) > 0.99, ious


def test_compiled_encoder_gives_the_same_masks(engine_bf16: SamEngine, cases) -> None:
    """``compile_encoder`` with inductor in bf16 (the setting it would run with) against the eager encoder."""
    reason = compile_unavailable("inductor")
    if reason:
        pytest.skip(reason)
    compiled = SamEngine(
        EngineConfig(model=TINY_SAM2, allow_random_weights=True, logits_dtype="float32", compile_encoder=True)
    )
    with tf32(True):
        ours, eager = segment_afresh(compiled, cases), segment_afresh(engine_bf16, cases)
    ious = mask_ious(ours, eager)
    assert min(ious) > 0.95, ious
    # bf16 rounding differs where inductor fuses operations; a wrong graph would be off by the logits' whole scale.
    largest_diff = max(float(np.abs(a.logits - b.logits).max()) for a, b in zip(ours, eager, strict=True))
    scale = max(float(np.abs(result.logits).max()) for result in eager)
    assert largest_diff < 0.05 * scale, (largest_diff, scale)


@pytest.fixture(scope="module")
def gpu_ray():
    """A local Ray with this machine's GPUs and a little CPU, stopped after the module."""
    import ray

    # GPUs counted by torch, not left to Ray's detection: a task asking for a GPU Ray missed would wait forever.
    ray.init(num_cpus=4, num_gpus=torch.cuda.device_count(), include_dashboard=False, namespace="samrl-gpu-test")
    yield ray
    ray.shutdown()


def test_engine_in_a_ray_worker_takes_the_gpu_ray_assigned(gpu_ray) -> None:
    """``device: auto`` inside Ray workers on real GPUs: the assigned GPU, also where Ray leaves every GPU visible,
    and the CPU for a worker given none."""

    @gpu_ray.remote
    def engine_placement() -> tuple[list[str], str, str | None]:
        """The GPU ids Ray gave this worker, where the engine's weights are, and the UUID of the engine's GPU."""
        import ray
        import torch

        from reward_server.config import EngineConfig
        from reward_server.engine import SamEngine

        engine = SamEngine(EngineConfig(model="sam2.1_hiera_t", allow_random_weights=True))
        weights = next(engine.model.parameters()).device
        uuid = str(torch.cuda.get_device_properties(weights).uuid) if weights.type == "cuda" else None
        return ray.get_runtime_context().get_accelerator_ids()["GPU"], str(weights), uuid

    # Ray names GPUs by their entry in this node's CUDA_VISIBLE_DEVICES, or by physical index where it is unset.
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    noset = {"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}
    for options in ({"num_gpus": 1}, {"num_gpus": 1, "runtime_env": noset}):
        (gpu_id,), weights, uuid = gpu_ray.get(engine_placement.options(**options).remote(), timeout=RAY_TIMEOUT_S)
        index = visible.index(gpu_id) if visible else int(gpu_id)
        assert weights.startswith("cuda"), (options, weights)
        assert uuid == str(torch.cuda.get_device_properties(index).uuid), (options, gpu_id, weights)
    gpu_ids, weights, _ = gpu_ray.get(engine_placement.options(num_gpus=0).remote(), timeout=RAY_TIMEOUT_S)
    assert gpu_ids == [] and weights == "cpu"
