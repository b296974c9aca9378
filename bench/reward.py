"""Training-step-shaped SAM2 (or SAM 3) load, run the naive way and through the reward server's engine, in one process.

- naive: ``SAM2ImagePredictor.set_image`` + ``predict`` per rollout call, as public implementations do; for SAM 3
  (``--model sam3_tiny``, or ``sam3`` with ``--checkpoint``) transformers' documented path per call
  (``Sam3TrackerProcessor`` on the image and the prompt, then ``Sam3TrackerModel``).
- server: the engine behind every pool actor: each image encoded once, all calls of a turn decoded in batches.

Shapes: ``samr1`` (images x rollouts, one box + point call each) and ``veteran`` (images x rollouts x turns: a box
call, then refinement calls with a point and the previous call's logits as ``mask_input``). Logits are returned in
float32 here so the parity figure measures the computation, not the float16 transport.

``python -m bench.reward [--model sam2.1_hiera_l --checkpoint PATH --image-size 1024 --device cuda --images 16]``
``python -m bench.reward --model sam3 --checkpoint facebook/sam3 --image-size 1024 --device cuda``
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Sequence

import numpy as np
from sam2.sam2_image_predictor import SAM2ImagePredictor
from tqdm import tqdm

from reward_server.config import EngineConfig
from reward_server.engine import LOGIT_CLAMP, SamEngine
from reward_server.protocol import ImageRef, Prompt, SegRequest
from reward_server.sam3_engine import SAM3_MODEL, SAM3_MODELS, Sam3Engine
from reward_server.segmenters import build_engine


def _images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((size, size, 3)) * 255).astype(np.uint8) for _ in range(count)]


def _first_prompt(rng: np.random.Generator, size: int) -> Prompt:
    x1, y1 = rng.uniform(0, 0.4 * size, 2)
    x2, y2 = rng.uniform(0.6 * size, size, 2)
    center = ((x1 + x2) / 2, (y1 + y2) / 2)
    return Prompt(box=(x1, y1, x2, y2), points=(center,), labels=(1,))


def _refinement(first: Prompt, click: np.ndarray, logits: np.ndarray) -> Prompt:
    """A refinement call: the first box, one click ``(x, y, label)`` and the previous call's logits."""
    return Prompt(box=first.box, points=(tuple(click[:2]),), labels=(int(click[2]),), mask_input=logits)


def _naive_sam3(engine: Sam3Engine, image: np.ndarray, prompt: Prompt) -> np.ndarray:
    """transformers' path for one call: the processor encodes the image and the prompt, the tracker segments."""
    import torch

    inputs = engine.processor(
        images=image,
        input_boxes=[[list(prompt.box)]],
        input_points=[[[list(point) for point in prompt.points]]],
        input_labels=[[list(prompt.labels)]],
        return_tensors="pt",
    ).to(engine.device)
    masks = None if prompt.mask_input is None else torch.from_numpy(prompt.mask_input)[None, None].to(engine.device)
    with torch.inference_mode():
        out = engine.model(**inputs, input_masks=masks, multimask_output=False)
    # Clamped as SAM2ImagePredictor and the engine return logits, so the next call's mask input is the same.
    return out.pred_masks[0, 0, 0].float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP).cpu().numpy()


def _naive(predictor: SAM2ImagePredictor, image: np.ndarray, prompt: Prompt) -> np.ndarray:
    predictor.set_image(image)
    _, _, logits = predictor.predict(
        point_coords=np.array(prompt.points, np.float32),
        point_labels=np.array(prompt.labels),
        box=np.array(prompt.box, np.float32),
        mask_input=None if prompt.mask_input is None else prompt.mask_input[None],
        multimask_output=False,
    )
    return logits[0]


def run_shape(engine: SamEngine, shape: str, images: list[np.ndarray], rollouts: int, turns: int) -> str:
    """Runs one shape both ways and returns its ``bench-reward:`` line."""
    size = images[0].shape[0]
    turns = 1 if shape == "samr1" else turns
    rng = np.random.default_rng(1)
    firsts = [[_first_prompt(rng, size) for _ in range(rollouts)] for _ in images]
    # Clicks drawn up front per (image, rollout, turn): both paths visit the cells in different orders.
    clicks = np.concatenate(
        [
            rng.uniform(0, size, (len(images), rollouts, turns, 2)),
            rng.integers(0, 2, (len(images), rollouts, turns, 1)),
        ],
        axis=-1,
    )

    if isinstance(engine, Sam3Engine):
        naive = functools.partial(_naive_sam3, engine)
    else:
        predictor = SAM2ImagePredictor(engine.model)
        predictor._bb_feat_sizes = engine.feature_sizes  # the predictor assumes 1024 px inputs
        naive = functools.partial(_naive, predictor)
    naive_logits: dict[tuple[int, int, int], np.ndarray] = {}
    started = time.perf_counter()
    naive_encodes = 0
    with tqdm(total=len(images) * rollouts * turns, desc=f"{shape} naive", leave=False) as progress:
        for i, image in enumerate(images):
            for r in range(rollouts):
                prompt = firsts[i][r]
                for t in range(turns):
                    if t:
                        prompt = _refinement(firsts[i][r], clicks[i, r, t], naive_logits[i, r, t - 1])
                    naive_logits[i, r, t] = naive(image, prompt)
                    naive_encodes += 1
                    progress.update()
    naive_wall = time.perf_counter() - started

    refs = [ImageRef.of(image) for image in images]
    encodes_before = engine.stats.encodes
    server_logits: dict[tuple[int, int, int], np.ndarray] = {}
    started = time.perf_counter()
    for t in tqdm(range(turns), desc=f"{shape} server", leave=False):
        cells = [(i, r) for i in range(len(images)) for r in range(rollouts)]
        prompts = [
            firsts[i][r] if t == 0 else _refinement(firsts[i][r], clicks[i, r, t], server_logits[i, r, t - 1])
            for i, r in cells
        ]
        payloads = {ref.key: ref.data for ref in refs} if t == 0 else None
        requests = [SegRequest(refs[i].key, p, return_logits=True) for (i, _), p in zip(cells, prompts, strict=True)]
        for (i, r), result in zip(cells, engine.segment(requests, payloads), strict=True):
            server_logits[i, r, t] = result.logits
    server_wall = time.perf_counter() - started
    server_encodes = engine.stats.encodes - encodes_before
    parity = max(float(np.abs(naive_logits[k] - server_logits[k]).max()) for k in naive_logits)
    return (
        f"bench-reward: shape={shape} naive_encodes={naive_encodes} server_encodes={server_encodes} "
        f"encode_ratio={naive_encodes / server_encodes:.1f} wall_ratio={naive_wall / server_wall:.1f} "
        f"parity_max_abs={parity:.2e}"
    )


def _image_size(model: str, requested: int) -> int | None:
    """The engine's ``image_size``: None keeps the model's own (SAM2's 1024, a SAM 3 checkpoint's); the tiny SAM 3
    takes a multiple of its 14 px patch."""
    if model == SAM3_MODEL or requested == 1024:
        return None
    return requested - requested % 14 if model in SAM3_MODELS else requested


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="sam2.1_hiera_t", help="packaged SAM2 config (sam2.1_hiera_l for Large), sam3 or sam3_tiny"
    )
    parser.add_argument("--checkpoint", default=None, help="checkpoint path or hub id (default: random weights)")
    parser.add_argument(
        "--image-size", type=int, default=512, help="SAM2 input resolution (1024 for real runs; sam3_tiny: 224)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--images", type=int, default=0, help="images per shape (default: 4 samr1, 2 veteran)")
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4, help="SAM2 calls per rollout in the veteran shape")
    parser.add_argument("--shapes", nargs="+", default=["samr1", "veteran"], choices=["samr1", "veteran"])
    args = parser.parse_args(argv)
    config = EngineConfig(
        model=args.model,
        checkpoint=args.checkpoint,
        allow_random_weights=args.checkpoint is None,
        image_size=_image_size(args.model, args.image_size),
        device=args.device,
        logits_dtype="float32",
        max_decode_batch=256,
    )
    engine = build_engine(config)
    print(
        f"bench-reward: model={args.model} device={engine.device} image_size={engine.info()['image_size']}", flush=True
    )
    for shape in args.shapes:
        count = args.images or (4 if shape == "samr1" else 2)
        print(run_shape(engine, shape, _images(count, 840, seed=len(shape)), args.rollouts, args.turns), flush=True)


if __name__ == "__main__":
    main()
