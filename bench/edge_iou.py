"""Edge-excluded IoU with the GT's ignore mask cached versus recomputed per call, on 840x840 masks.

A training step scores 8 rollouts (SAM-Veteran: up to 8 x 4 masks) against one GT, so the Canny + dilation that
depends on the GT alone is computed once per GT; this measures what that saves.
"""

import time

import cv2
import numpy as np

from reward_server.masks import MODEL_SIZE, edge_excluded_iou, edge_ignore_mask


def _masks(rng: np.random.Generator, count: int) -> tuple[np.ndarray, list[np.ndarray]]:
    gt = np.zeros((MODEL_SIZE, MODEL_SIZE), np.uint8)
    cv2.ellipse(gt, (420, 400), (250, 180), 20, 0, 360, 1, -1)
    cv2.rectangle(gt, (100, 550), (380, 800), 1, -1)
    preds = [np.roll(gt, (int(rng.integers(-30, 31)), int(rng.integers(-30, 31))), axis=(0, 1)) for _ in range(count)]
    return gt.astype(bool), [p.astype(bool) for p in preds]


def _best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None, rollouts: int = 8, repeats: int = 20) -> None:
    gt, preds = _masks(np.random.default_rng(0), rollouts)

    def recompute() -> list[float]:
        return [edge_excluded_iou(pred, gt) for pred in preds]

    def cached() -> list[float]:
        ignore = edge_ignore_mask(gt)
        return [edge_excluded_iou(pred, gt, ignore=ignore) for pred in preds]

    assert recompute() == cached()
    t_recompute, t_cached = _best_of(repeats, recompute), _best_of(repeats, cached)
    print(
        f"edge_excluded_iou, {MODEL_SIZE}x{MODEL_SIZE}, {rollouts} rollouts per GT (best of {repeats}): "
        f"recompute per call {t_recompute / rollouts * 1e3:.3f} ms/mask, cached ignore mask "
        f"{t_cached / rollouts * 1e3:.3f} ms/mask -> {t_recompute / t_cached:.2f}x faster with the cache"
    )


if __name__ == "__main__":
    main()
